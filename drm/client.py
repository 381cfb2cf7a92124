"""What other daemons (the origin and its transcoder) use of the DRM package: the only module
they import from here, so what the origin depends on is this page.

Packaging (the transcoder): the licence node's key store (:func:`open_title_keys`), a title's
content key (:func:`title_key`), and the packager's entry points and S3 sink.

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
from .keys.store import ContentKey, KeyStore
from .licence.entitlement import sign_token
from .licence.tokenkeys import signing_key
from .package.manifests import MASTER_NAME, MPD_NAME, in_hls, media_playlist_name
from .package.pipeline import PackageOptions, PackageResult, package_file, package_path
from .package.s3sink import S3Sink, S3SinkError, S3Target
from .package.segmenter import TrackOutput
from .package.sink import SegmentSink

__all__ = ["open_title_keys", "title_key", "licence_url", "EntitlementMinter", "ContentKey", "KeyStore", "DrmError",
           "PackageOptions", "PackageResult", "package_file", "package_path", "S3Sink", "S3SinkError", "S3Target",
           "SegmentSink", "TrackOutput", "MPD_NAME", "MASTER_NAME", "media_playlist_name", "in_hls"]


def open_title_keys(cluster: Any) -> KeyStore:
    """The key store of this cluster's ``[licence]`` node (it must run on this host: the store
    is its LMDB folder). Close it when done."""
    from .licence.daemon import open_key_store  # the licence daemon's imports only when used

    node = getattr(cluster, "licence", None)
    if node is None:
        raise DrmError("cluster.toml has no [licence] section: content keys live in its key store")
    return open_key_store(node, create_kek=True)


def title_key(store: KeyStore, title: str, scheme: str) -> ContentKey:
    """The title's newest key for ``scheme``, made now if it has none: re-packaging a title keeps
    the key its viewers' players hold, and one title never shares another's key."""
    infos = [i for i in store.infos(title) if i.scheme == scheme]
    if infos:
        newest = max(infos, key=lambda i: i.created)
        key = store.get(newest.kid)
        if key is None:
            raise DrmError(f"key {newest.kid.hex()} of title {title} vanished from the store")
        return key
    return store.add(title, scheme=scheme)


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
