"""What other daemons (the origin and its transcoder) use of the DRM package: the only module
they import from here, so what the origin depends on is this page.

Packaging (the transcoder): a title's content key (:func:`fetch_title_key`: from the licence
daemon's ``keys.title`` RPC when ``[licence] rpc_port`` is set, so transcoders run on any host;
otherwise from its key store opened directly, :func:`open_title_keys`, on the licence host only),
and the packager's entry points (a finished MP4, or a fragmented one followed while ffmpeg
writes it: :class:`StreamingPackager`) and S3 sink.

Playback (the origin's ``/api/titles/T/play``):

- :func:`licence_url`: where players ask for licences — this cluster's ``[licence]`` daemon;
- :class:`EntitlementMinter`: entitlement tokens with the claims ``headwater entitle`` makes
  (``sub``, ``titles``, ``iat``, ``exp``, ``jti``, and ``iss``/``aud`` when the licence server's
  ``[licence.tokens]`` names them), signed with a ``[[licence.tokens.keys]]`` key that can sign
  on this host (the licence server's sealed HS256 secret lives in its data_dir: same host).
"""


from __future__ import annotations

import secrets
from typing import Any

from .errors import DrmError
from .keys.service import METHOD as KEYS_METHOD
from .keys.service import open_key, title_key, transport_key
from .keys.store import ContentKey, KeyStore
from .licence.entitlement import sign_token
from .licence.tokenkeys import signing_key
from .package.manifests import MASTER_NAME, MPD_NAME, in_hls, media_playlist_name
from .package.pipeline import PackageOptions, PackageResult, package_file, package_path
from .package.s3sink import S3Sink, S3SinkError, S3Target
from .package.segmenter import TrackOutput
from .package.streaming import StreamingPackager
from .package.sink import SegmentSink

__all__ = ["fetch_title_key", "open_title_keys", "title_key", "licence_url", "EntitlementMinter", "ContentKey",
           "KeyStore", "DrmError", "PackageOptions", "PackageResult", "package_file", "package_path", "S3Sink",
           "S3SinkError", "S3Target", "SegmentSink", "StreamingPackager", "TrackOutput", "MPD_NAME", "MASTER_NAME", "media_playlist_name",
           "in_hls"]


def open_title_keys(cluster: Any) -> KeyStore:
    """The key store of this cluster's ``[licence]`` node (it must run on this host: the store
    is its LMDB folder). Close it when done."""
    from .licence.daemon import open_key_store  # the licence daemon's imports only when used

    node = getattr(cluster, "licence", None)
    if node is None:
        raise DrmError("cluster.toml has no [licence] section: content keys live in its key store")
    return open_key_store(node, create_kek=True)


def fetch_title_key(cluster: Any, title: str, scheme: str, *, timeout_s: float = 30.0) -> ContentKey:
    """The title's content key for ``scheme`` (made on first use), from a blocking caller (the
    transcoder's job thread): over the licence daemon's ``keys.title`` RPC when its ``rpc_port``
    is set (the cluster secret authenticates both ends; the key comes sealed), else from its key
    store on this host. Raises :class:`DrmError` (or the RPC's errors) on failure."""
    node = getattr(cluster, "licence", None)
    if node is None:
        raise DrmError("cluster.toml has no [licence] section: content keys live in its key store")
    if node.rpc_port is None:
        store = open_title_keys(cluster)
        try:
            return title_key(store, title, scheme)
        finally:
            store.close()

    async def ask() -> ContentKey:
        from headwater.rpc import RpcClient, cluster_secret  # the RPC stack only when used

        secret = cluster_secret(cluster)
        async with RpcClient(node.host, node.rpc_port, secret=secret, connect_timeout=min(5.0, timeout_s),
                             default_timeout=timeout_s) as client:
            reply = await client.call(KEYS_METHOD, {"title": title, "scheme": scheme})
        result = reply.result
        if not isinstance(result, dict) or not isinstance(result.get("kid"), bytes) or len(result["kid"]) != 16:
            raise DrmError(f"the licence daemon's {KEYS_METHOD} answer is malformed")
        kid = result["kid"]
        key = open_key(transport_key(secret.key), title, scheme, kid, result.get("sealed"))
        return ContentKey(kid=kid, key=key, title=title)

    import anyio

    # A loop of its own in the caller's thread: the job thread is blocking by design, and the
    # daemon's loop keeps serving /healthz meanwhile.
    return anyio.run(ask)


def licence_url(cluster: Any) -> str | None:
    """The ClearKey licence endpoint of this cluster's ``[licence]`` node, or None."""
    node = getattr(cluster, "licence", None)
    if node is None:
        return None
    return f"{'https' if node.tls_cert else 'http'}://{node.host}:{node.port}/licence"


class EntitlementMinter:
    """Mints entitlement tokens the licence server of ``cluster`` accepts (see the module docstring).

    The signing key is loaded once, here: a cluster without ``[licence]``, or whose keys cannot
    sign on this host, raises :class:`ValueError` (or the key store's error) at construction."""

    def __init__(self, cluster: Any, *, key_id: str = "") -> None:
        node = getattr(cluster, "licence", None)
        if node is None:
            raise ValueError("cluster.toml has no [licence] section: no licence tokens can be minted")
        self.kid, self.alg, self._key = signing_key(cluster, node, key_id or None)
        self.issuer = node.tokens.issuer
        self.audience = node.tokens.audience

    def mint(self, *, user: str, titles: list[str], now: float, lifetime_s: float) -> tuple[str, int]:
        """(token, exp) entitling ``user`` to ``titles`` from ``now`` for ``lifetime_s`` seconds."""
        iat = int(now)
        exp = iat + max(1, int(lifetime_s))
        claims: dict[str, Any] = {"sub": user, "titles": list(titles), "iat": iat, "exp": exp,
                                  "jti": secrets.token_urlsafe(12)}
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return sign_token(claims, self._key, self.alg, kid=self.kid), exp
