"""Content keys for packagers on other hosts: the licence daemon's ``keys.title`` RPC.

A transcoder packages a title with the title's content key, which lives in the licence node's
key store (LMDB, one host). A transcoder on another host asks the licence daemon for it over the
kernel's RPC (:mod:`headwater.rpc`): the connection is refused before any call unless the caller
proves the cluster secret (HMAC challenge-response), and the key travels sealed, because that
handshake authenticates the peers but does not encrypt the traffic after it.

The seal: AES-256-GCM under ``HMAC-SHA256(cluster key, "headwater drm key transport v1")`` (the
cluster key is itself derived from the secret, so the secret keys nothing directly), a fresh
12-byte nonce per answer, and associated data binding title, scheme and KID, so an answer
replayed for another title, scheme or KID fails to open. Whoever holds the cluster secret can
ask for any title's key: it is the credential of every node, as the KEK is the credential of the
store. Each answer is written to the licence server's audit log.

:func:`title_key` (get or make a title's key) is the one rule both the RPC and a transcoder on the
licence host (which opens the store directly) follow.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, Callable

import msgpack
from Crypto.Cipher import AES

from ..errors import DrmError, KeyStoreError
from .store import ContentKey, KeyStore

__all__ = ["METHOD", "title_key", "transport_key", "seal_key", "open_key", "KeyService", "parse_request"]

#: The RPC method the licence daemon serves.
METHOD = "keys.title"
_LABEL = b"headwater drm key transport v1"
#: Packaging schemes a title key is made for (the key store's scheme field).
REQUEST_SCHEMES = ("cenc", "cbcs", "aes128")
MAX_TITLE_CHARS = 256


def title_key(store: KeyStore, title: str, scheme: str) -> ContentKey:
    """The title's newest key for ``scheme``, made now if it has none: re-packaging a title keeps
    the key its viewers' players hold, and one title never shares another's key."""
    infos = [i for i in store.infos(title) if i.scheme == scheme]
    if infos:
        newest = max(infos, key=lambda i: i.created)
        key = store.get(newest.kid)
        if key is None:
            raise KeyStoreError(f"key {newest.kid.hex()} of title {title} vanished from the store")
        return key
    return store.add(title, scheme=scheme)


def transport_key(cluster_key: bytes) -> bytes:
    """The AES-256 key answers are sealed under, from the cluster's derived key
    (:attr:`headwater.rpc.ClusterSecret.key`)."""
    return hmac.new(cluster_key, _LABEL, hashlib.sha256).digest()


def _aad(title: str, scheme: str, kid: bytes) -> bytes:
    return msgpack.packb([title, scheme, kid], use_bin_type=True)


def seal_key(tkey: bytes, title: str, scheme: str, kid: bytes, key: bytes, *, nonce: bytes | None = None) -> bytes:
    """``nonce || ciphertext || tag`` of ``key``, bound to title, scheme and KID."""
    nonce = secrets.token_bytes(12) if nonce is None else nonce
    cipher = AES.new(tkey, AES.MODE_GCM, nonce=nonce)
    cipher.update(_aad(title, scheme, kid))
    sealed, tag = cipher.encrypt_and_digest(key)
    return nonce + sealed + tag


def open_key(tkey: bytes, title: str, scheme: str, kid: bytes, sealed: bytes) -> bytes:
    """The key :func:`seal_key` sealed; :class:`KeyStoreError` if it was sealed under another
    secret, for another title, scheme or KID, or altered."""
    if not isinstance(sealed, bytes) or len(sealed) != 12 + 16 + 16:
        raise KeyStoreError("a sealed content key is 44 bytes")
    cipher = AES.new(tkey, AES.MODE_GCM, nonce=sealed[:12])
    cipher.update(_aad(title, scheme, kid))
    try:
        return cipher.decrypt_and_verify(sealed[12:-16], sealed[-16:])
    except ValueError:
        raise KeyStoreError(f"the sealed key for title {title} ({scheme}) does not open: another cluster's "
                            "secret, or altered on the way") from None


def parse_request(args: Any) -> tuple[str, str]:
    """``(title, scheme)`` of a ``keys.title`` call's arguments, or :class:`BadKeyRequest`."""
    if not isinstance(args, dict) or set(args) != {"title", "scheme"}:
        raise BadKeyRequest("keys.title takes exactly {title, scheme}")
    title, scheme = args["title"], args["scheme"]
    if not isinstance(title, str) or not title or len(title) > MAX_TITLE_CHARS or not title.isprintable():
        raise BadKeyRequest(f"title: 1..{MAX_TITLE_CHARS} printable characters")
    if scheme not in REQUEST_SCHEMES:
        raise BadKeyRequest(f"scheme: one of {', '.join(REQUEST_SCHEMES)}")
    return title, scheme


class BadKeyRequest(DrmError):
    """A ``keys.title`` call with arguments outside its contract."""

    http_status = 400
    code = "bad_request"


class KeyService:
    """The ``keys.title`` handler: get or make the title's key in ``store`` and answer it sealed.

    The store's read-then-add runs on the daemon's event loop without an await in between, so
    two transcoders asking for a new title at once get one key, not two. ``on_served(title,
    scheme, kid)`` is called once per answer (the audit log; never the key)."""

    def __init__(self, store: KeyStore, cluster_key: bytes, *,
                 on_served: Callable[[str, str, bytes], None] | None = None) -> None:
        self._store = store
        self._tkey = transport_key(cluster_key)
        self._on_served = on_served
        self.counts = {"keys_served": 0, "keys_refused": 0}

    def answer(self, args: Any) -> dict[str, Any]:
        """The reply's result for ``args``: ``{kid, sealed}``. Raises :class:`DrmError`."""
        try:
            title, scheme = parse_request(args)
            content = title_key(self._store, title, scheme)
        except DrmError:
            self.counts["keys_refused"] += 1
            raise
        self.counts["keys_served"] += 1
        if self._on_served is not None:
            self._on_served(title, scheme, content.kid)
        return {"kid": content.kid, "sealed": seal_key(self._tkey, title, scheme, content.kid, content.key)}
