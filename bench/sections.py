"""cluster.toml fragments a small origin world is built from, shared by the benches that start one
(:mod:`.playback`) and the tests' harnesses (``tests/functional/origin_harness.py`` and the modules
using it): one spelling of each, so a key added to the licence server or the transcoder reaches
both. Format keys are the callers' ports (``{licence}``, ``{licence_admin}``, ``{licence_rpc}``,
``{transcoder_admin}``); a bench cannot import the tests, the tests may import the bench.
"""

from __future__ import annotations

__all__ = ["ORIGIN_CLIENTS", "LICENCE_SECTION", "SMALL_LADDER", "TRANSCODER_KEYS", "TRANSCODER_SECTION"]

#: The built-in issuer's two clients (``headwater token --client …``): a creator and a viewer.
ORIGIN_CLIENTS = """[[origin.clients]]
id = "creator-app"
scopes = ["upload", "titles:write"]
secret = "sealed"

[[origin.clients]]
id = "viewer-app"
scopes = ["view"]
secret = "sealed"
"""

#: A licence server on the caller's ports, TLS from the local CA, its entitlement tokens signed
#: with a sealed HS256 secret (what /play mints); a transcoder takes titles' keys from its
#: keys.title RPC, as one on another host would.
LICENCE_SECTION = """[licence]
port = {licence}
admin_port = {licence_admin}
rpc_port = {licence_rpc}
tls_cert = "auto"
tls_key = "auto"

[[licence.tokens.keys]]
id = "local"
alg = "HS256"
secret = "sealed"
"""

#: A two-rung ladder small enough for a test clip (testsrc2 at 320x180).
SMALL_LADDER = """[[transcoder.ladder]]
name = "180p"
height = 180
bitrate = "300k"

[[transcoder.ladder]]
name = "90p"
height = 90
bitrate = "100k"
"""

#: A transcoder quick to take jobs and to encode (``{transcoder_admin}``), without its ladder.
TRANSCODER_KEYS = """[transcoder]
admin_port = {transcoder_admin}
workers = 1
lease_seconds = 10
heartbeat_seconds = 0.5
poll_seconds = 0.2
preset = "ultrafast"
audio_bitrate = "64k"
thumbnail_seconds = 5
"""

#: :data:`TRANSCODER_KEYS` with :data:`SMALL_LADDER`.
TRANSCODER_SECTION = TRANSCODER_KEYS + "\n" + SMALL_LADDER
