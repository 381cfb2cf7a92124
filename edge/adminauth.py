"""Credentials for the edge's admin routes that change state: a signed request. Sans-IO.

Tier-to-tier calls (a POP forwarding an invalidation to the shield, a puller reading the purge
feed) and the operator's CLI (``headwater cdn invalidate``) prove that they hold the cluster
secret (:mod:`headwater.rpc.auth` loads it) by signing each request; the admin endpoint checks
the signature before it reads anything the request asks for.

Why a signed request and not a bearer token: the admin ports are plain HTTP on a private
network. A bearer token seen once on the wire could be replayed for ever; a signature covers the
method, the target, a hash of the body, a timestamp and a nonce, so what is seen can be replayed
neither later (the timestamp window) nor within the window (each nonce is accepted once), and
changing any byte of the request (another path to purge, another distribution) breaks it. The
secret itself never travels.

Wire format, one header::

    Authorization: HW-HMAC-SHA256 ts=1767290400, nonce=3f5c…(32 hex), sig=9a1b…(64 hex)

    sig = HMAC-SHA256(k, "HW-HMAC-SHA256" \\n cluster \\n METHOD \\n target \\n ts \\n nonce \\n
                         hex(SHA-256(body)))
    k   = HMAC-SHA256(ClusterSecret.key, "headwater admin request v1")

``target`` is the request-target as sent (path and query). ``k`` is derived from the RPC key
under its own label, so an admin signature never doubles as an RPC proof and the reverse. The
cluster's name is signed too: a request signed for another cluster fails here.

Checks, in order, each failure an :class:`AdminAuthError` carrying its status: no
``Authorization`` header, or another scheme → 401 (the caller sent no credentials); malformed
fields → 401; a wrong signature → 403; a timestamp outside ``window_s`` of this host's clock →
403; a nonce already accepted within the window → 403 (a replay). The signature is checked before
the timestamp and the nonce so an unauthenticated client learns nothing about either, and only an
authentic request ever takes a place in the nonce memory (bounded by ``max_nonces``: when it is
full of nonces still inside the window, new requests are refused with 503 rather than forgetting
one that could then be replayed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict

__all__ = ["SCHEME", "AdminAuthError", "AdminKey", "AdminVerifier", "admin_key"]

SCHEME = "HW-HMAC-SHA256"
_LABEL = b"headwater admin request v1"
_MAX_HEADER_CHARS = 512
_FIELDS = re.compile(r"ts=([0-9]{1,12}),\s*nonce=([0-9a-f]{32}),\s*sig=([0-9a-f]{64})")


class AdminAuthError(Exception):
    """A request to an admin route that is refused; ``http_status`` is 401, 403 or 503."""

    def __init__(self, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.reason = reason


class AdminKey:
    """The key admin requests are signed with, for one cluster (never printed: no ``repr`` of it)."""

    __slots__ = ("cluster", "_key")

    def __init__(self, cluster: str, key: bytes) -> None:
        self.cluster = cluster
        self._key = key

    def __repr__(self) -> str:
        return f"AdminKey(cluster={self.cluster!r})"

    def signature(self, method: str, target: str, ts: int, nonce: str, body: bytes) -> str:
        msg = "\n".join((SCHEME, self.cluster, method.upper(), target, str(ts), nonce,
                         hashlib.sha256(body).hexdigest())).encode("utf-8", "surrogateescape")
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def authorization(self, method: str, target: str, body: bytes = b"", *, now: float,
                      nonce: str | None = None) -> str:
        """The ``Authorization`` value for one request sent at ``now`` (a fresh nonce each call)."""
        nonce = secrets.token_hex(16) if nonce is None else nonce
        ts = int(now)
        return f"{SCHEME} ts={ts}, nonce={nonce}, sig={self.signature(method, target, ts, nonce, body)}"


def admin_key(secret: object) -> AdminKey:
    """The admin key of a :class:`~headwater.rpc.auth.ClusterSecret` (its ``cluster`` and ``key``)."""
    cluster: str = getattr(secret, "cluster")
    key: bytes = getattr(secret, "key")
    return AdminKey(cluster, hmac.new(key, _LABEL, hashlib.sha256).digest())


class AdminVerifier:
    """Checks signed admin requests (see the module docstring); ``now`` is always passed in.

    One per process: the nonce memory is this process's, so with several workers on one admin
    port a replay inside the window could reach another worker (the window bounds that).
    """

    def __init__(self, key: AdminKey | None, *, window_s: float = 60.0, max_nonces: int = 100_000,
                 why_no_key: str = "no cluster secret is configured on this host") -> None:
        if window_s <= 0 or max_nonces < 1:
            raise ValueError("window_s must be positive and max_nonces at least 1")
        self.key = key
        self.window_s = window_s
        self.max_nonces = max_nonces
        self.why_no_key = why_no_key
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce -> when it stops mattering

    def check(self, method: str, target: str, body: bytes, authorization: str | None, *, now: float) -> None:
        """Return if the request is authentic, fresh and not a replay; else AdminAuthError."""
        if self.key is None:
            # Fail closed: without the secret nothing can be authenticated, so nothing is allowed.
            raise AdminAuthError(403, f"admin requests are refused: {self.why_no_key}")
        if not authorization:
            raise AdminAuthError(401, f"credentials required: sign the request ({SCHEME})")
        if len(authorization) > _MAX_HEADER_CHARS:
            raise AdminAuthError(401, "the Authorization header is too long")
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme != SCHEME:
            raise AdminAuthError(401, f"unsupported credentials: expected {SCHEME}")
        m = _FIELDS.fullmatch(rest.strip())
        if m is None:
            raise AdminAuthError(401, f"malformed {SCHEME} credentials (ts=, nonce=, sig=)")
        ts, nonce, sig = int(m.group(1)), m.group(2), m.group(3)
        if not hmac.compare_digest(sig, self.key.signature(method, target, ts, nonce, body)):
            raise AdminAuthError(403, "the request's signature does not match (wrong cluster secret, "
                                      "or the request was changed)")
        if abs(now - ts) > self.window_s:
            raise AdminAuthError(403, f"the request's timestamp is more than {self.window_s:.0f} s from "
                                      f"this host's clock (clock skew, or a replay)")
        self._expire(now)
        if nonce in self._nonces:
            raise AdminAuthError(403, "this request was already accepted once (a replay)")
        if len(self._nonces) >= self.max_nonces:
            raise AdminAuthError(503, "too many admin requests in the window; retry shortly")
        # A nonce matters until its timestamp leaves the window; insertion order is close to
        # expiry order (timestamps within the window), and _expire stops at the first live one.
        self._nonces[nonce] = ts + self.window_s

    def _expire(self, now: float) -> None:
        nonces = self._nonces
        while nonces:
            nonce, until = next(iter(nonces.items()))
            if until >= now:
                break
            del nonces[nonce]

    def remembered(self) -> int:
        """Nonces held (for /metrics and tests)."""
        return len(self._nonces)


