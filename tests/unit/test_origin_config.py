"""``[origin]`` as cluster.toml gives it: the shipped defaults, and errors that name the key."""

from __future__ import annotations

import hashlib
import os

import pytest

from headwater.config import ConfigError, load, loads

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "cluster.toml")


def test_shipped_config():
    node = load(SHIPPED).origin
    assert (node.host, node.port, node.admin_port, node.tls_cert) == ("127.0.0.1", 8090, 9090, "auto")
    assert node.part_size == 5 * 1024 * 1024 and node.uploads_bucket == "uploads"
    assert node.issuer == "https://127.0.0.1:8090" and node.oauth.builtin
    assert [(c.id, c.sealed) for c in node.clients] == [("creator-app", True), ("viewer-app", True)]
    assert node.limits.max_body_bytes == node.max_upload_bytes  # a PATCH is bounded by the upload size
    assert node.needs_cluster_secret


def test_own_secret_and_external_issuer():
    digest = hashlib.sha256(b"x" * 40).hexdigest()
    node = loads(f'''[origin]
tls = false
[origin.oauth]
issuer = "https://login.example/"
jwks_url = "https://login.example/jwks"
[[origin.clients]]
id = "ci"
scopes = ["upload"]
secret_sha256 = "{digest}"
''', path="cluster.toml").origin
    assert not node.oauth.builtin and node.issuer == "https://login.example/"
    assert node.clients[0].secret_sha256 == bytes.fromhex(digest) and not node.needs_cluster_secret


@pytest.mark.parametrize("text,key", [
    ('[origin]\npart_size = "1KiB"\n', "origin.part_size"),
    ('[origin]\nmax_upload_size = "1TiB"\n', "origin.max_upload_size"),  # > 10000 parts of 5 MiB
    ('[origin]\nuploads_bucket = "Up_loads"\n', "origin.uploads_bucket"),
    ('[origin]\naccess_key = "a"\n', "origin.secret_key"),
    ('[origin]\n[origin.oauth]\njwks_url = "https://x/jwks"\n', "origin.oauth.issuer"),
    ('[origin]\n[[origin.clients]]\nid = "a"\nscopes = ["root"]\nsecret = "sealed"\n', "origin.clients[0].scopes"),
    ('[origin]\n[[origin.clients]]\nid = "a"\nscopes = ["upload"]\nsecret = "hunter2"\n',
     "origin.clients[0].secret"),
    ('[origin]\n[[origin.clients]]\nid = "a"\nscopes = []\nsecret_sha256 = "abcd"\n',
     "origin.clients[0].secret_sha256"),
    ('[origin]\nport = 9000\n[origin.limits]\nmin_body_rate = "1KiB"\nbogus = 1\n', "origin.limits.bogus"),
    ('[origin]\nvideos_bucket = "V"\n', "origin.videos_bucket"),
    ('[origin]\n[origin.delivery]\nmanifest_cache_control = ""\n', "origin.delivery.manifest_cache_control"),
    ('[origin]\n[origin.delivery]\nsegment_cache_control = "a\\u00e9"\n', "origin.delivery.segment_cache_control"),
    ('[origin]\n[origin.delivery]\ncdn_base_url = "ftp://x"\n', "origin.delivery.cdn_base_url"),
    ('[origin]\n[origin.delivery]\npublish_cache_seconds = 7200\n', "origin.delivery.publish_cache_seconds"),
    ('[origin]\n[origin.delivery]\nplay_url_seconds = 0\n', "origin.delivery.play_url_seconds"),
    ('[origin]\n[origin.delivery]\nbogus = 1\n', "origin.delivery.bogus"),
])
def test_errors_name_the_key(text, key):
    with pytest.raises(ConfigError) as e:
        loads(text, path="cluster.toml")
    assert e.value.key == key
