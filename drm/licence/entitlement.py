"""Entitlement tokens: JWT bearer tokens (RFC 7519) signed HS256 or ES256, signatures checked by
PyJWT's algorithm objects (HMAC-SHA256, ECDSA P-256 on ``cryptography``).

Why PyJWT rather than joserfc: the licence server needs only JWS compact tokens with two
algorithms, and PyJWT does exactly that on ``cryptography`` (already the kernel's dependency
for the local CA), takes pre-parsed key objects (no PEM parsing per request) and refuses to
use an asymmetric (PEM) key as an HMAC secret when the key is prepared; joserfc's wider JWE/JWK
surface is nothing this server uses. The compact form itself (three base64url segments, the
header, the payload) is parsed here, as strictly as PyJWT 2.15 parses it, because
``jwt.decode`` spends most of its time per token re-preparing the key and checking the
alphabet one character at a time: over half of a licence's CPU. The signature is then checked
by the PyJWT algorithm object bound to the key (its ``verify``: ``hmac.compare_digest`` for
HS256), with the key PyJWT prepared once at start.

A token's claims::

    sub         the user (required)
    titles      the title ids it entitles (or ``title``: one); strings or integers
    exp, iat    expiry and issue time, seconds since the epoch (both required)
    jti         its id (required when a title's policy makes tokens single-use)
    device      optional: the device it was issued for
    nbf         optional: not valid before
    rental_end  optional: the end of a rental window (nbf .. rental_end)
    iss, aud    checked when the config names an issuer or audience

Algorithm confusion is closed by construction: a key is configured *with* its algorithm, and a
token is verified only by keys whose algorithm equals the token's ``alg`` header, with PyJWT
told that one algorithm; ``none`` and every other algorithm are refused before any key is
touched. So an HS256 token "signed" with an ES256 public key meets either no HS key at all or
the real HS secret, and fails either way.

Time is checked here with the injected clock (PyJWT's own time checks are switched off: it reads
the system clock). Single-use tokens: :class:`ReplayCache` remembers each used ``jti`` until
its token expires, in a bounded table; when the table is full of unexpired ids, new single-use
tokens are refused (429) rather than forgotten ids let through.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import TooManyRequests, Unauthorized

__all__ = [
    "ALGORITHMS", "MAX_TOKEN_CHARS", "VerificationKey", "Entitlement", "TokenVerifier", "ReplayCache",
    "sign_token",
]

ALGORITHMS = ("HS256", "ES256")
MAX_TOKEN_CHARS = 4096
MAX_TITLES = 1000
_MAX_STR = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationKey:
    """One key a token may be verified with: its id (the JWT header's ``kid``; None matches
    tokens without one), its algorithm, and the key (HS256: the secret bytes; ES256: a P-256
    public key object)."""

    kid: str | None
    alg: str
    key: Any
    # The key as PyJWT's PyJWK, prepared once: PyJWT then verifies with the algorithm the key is
    # bound to and skips its per-call key preparation (which tried to parse an HMAC secret as a
    # DER public key on every token).
    jwk: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.alg not in ALGORITHMS:
            raise ValueError(f"unsupported algorithm {self.alg!r}")
        if self.alg == "HS256" and (not isinstance(self.key, bytes) or len(self.key) < 32):
            raise ValueError("an HS256 secret is at least 32 bytes")
        if self.alg == "ES256" and not (isinstance(self.key, ec.EllipticCurvePublicKey)
                                        and isinstance(self.key.curve, ec.SECP256R1)):
            raise ValueError("an ES256 key is a P-256 public key")
        if self.alg == "HS256":
            data = {"kty": "oct", "k": base64.urlsafe_b64encode(self.key).rstrip(b"=").decode()}
        else:
            data = jwt.algorithms.ECAlgorithm.to_jwk(self.key, as_dict=True)
        object.__setattr__(self, "jwk", jwt.PyJWK(data, algorithm=self.alg))


@dataclass(frozen=True, slots=True, kw_only=True)
class Entitlement:
    """What a verified token grants."""

    user: str
    titles: frozenset[str]
    exp: float
    iat: float
    jti: str | None = None
    device: str | None = None
    nbf: float | None = None
    rental_end: float | None = None
    kid: str | None = None


def _number(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise Unauthorized(f"the token has no {name!r} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unauthorized(f"the token's {name!r} claim is not a number")
    return float(value)


def _string(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_STR:
        raise Unauthorized(f"the token's {name!r} claim is not a string of 1..{_MAX_STR} characters")
    return value


def _titles(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("titles")
    if raw is None and "title" in claims:
        raw = [claims["title"]]
    if not isinstance(raw, list) or not raw or len(raw) > MAX_TITLES:
        raise Unauthorized(f"the token needs 'titles' (1..{MAX_TITLES} title ids) or 'title'")
    out = set()
    for t in raw:
        if isinstance(t, bool) or not isinstance(t, (str, int)) or not str(t) or len(str(t)) > _MAX_STR:
            raise Unauthorized("the token's titles are strings or integers")
        out.add(str(t))
    return frozenset(out)


# A JWS segment: the URL-safe alphabet, '=' padding tolerated (some issuers pad) as PyJWT does.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# The last character of a segment whose length is 2 or 3 modulo 4 carries 4 or 2 unused bits:
# the canonical encoding has them zero, so only these characters may end it.
_CANONICAL_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}
_HEADER_CACHE_ENTRIES = 64


def _segment(seg: str, what: str) -> bytes:
    """One base64url segment of a compact JWS, decoded as strictly as PyJWT 2.15 decodes it
    (GHSA-hxm8-2xgr-2p9m): only the URL-safe alphabet, padding only up to a multiple of four,
    and the canonical encoding (no stray low bits), so one token has one spelling."""
    if _SEGMENT.fullmatch(seg) is None:
        raise Unauthorized(f"the bearer token's {what} is not base64url")
    stripped = seg.rstrip("=")
    rest = len(stripped) % 4
    if (len(stripped) != len(seg) and len(seg) % 4) or rest == 1 \
            or (rest and stripped[-1] not in _CANONICAL_LAST[rest]):
        raise Unauthorized(f"the bearer token's {what} is not base64url")
    # The alphabet is checked above, so the plain decoder sees only valid characters.
    return binascii.a2b_base64(stripped.encode("ascii").translate(_TO_STANDARD) + b"=" * (-rest % 4))


def _parse_header(seg: str) -> dict[str, Any]:
    """The JOSE header: a JSON object with no extension this server does not implement."""
    if len(seg) > 1024:
        raise Unauthorized("the bearer token's header is too long")
    try:
        header = json.loads(_segment(seg, "header").decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Unauthorized("the bearer token's header is malformed") from None
    if not isinstance(header, dict):
        raise Unauthorized("the bearer token's header is malformed")
    # RFC 7515 4.1.11: an unknown critical extension must be refused; we implement none (PyJWT
    # knows only b64=false, which needs a detached payload we never take).
    if "crit" in header or header.get("b64", True) is not True:
        raise Unauthorized("the token uses a JWS extension (crit, b64) this server does not support")
    return header


class TokenVerifier:
    """Verifies bearer tokens against the keys ``keys()`` returns at each call (static keys
    from the config plus an issuer's JWKS as last fetched).

    ``on_unknown_kid(kid)`` is called when a token names a key id no key has (the JWKS fetcher
    refreshes early, rate-limited). ``leeway_s`` allows for clock skew on exp/nbf/iat.
    """

    def __init__(self, keys: Callable[[], Sequence[VerificationKey]], *, clock: Callable[[], float],
                 leeway_s: float = 30.0, max_lifetime_s: float = 7 * 24 * 3600.0,
                 issuer: str | None = None, audience: str | None = None,
                 on_unknown_kid: Callable[[str], None] | None = None) -> None:
        self.keys = keys
        self.clock = clock
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        self.issuer = issuer
        self.audience = audience
        self.on_unknown_kid = on_unknown_kid
        # Parsed headers by their segment: an issuer signs every token with the same few
        # headers. Parsing is a pure function of the (unauthenticated) segment, so this caches
        # no verdict; bounded, and emptied when full (a flood of distinct headers costs what
        # parsing them costs anyway).
        self._headers: dict[str, dict[str, Any]] = {}

    def _header(self, seg: str) -> dict[str, Any]:
        header = self._headers.get(seg)
        if header is None:
            header = _parse_header(seg)
            if len(self._headers) >= _HEADER_CACHE_ENTRIES:
                self._headers.clear()
            self._headers[seg] = header
        return header

    def verify(self, token: str) -> Entitlement:
        """The entitlement ``token`` carries; raises Unauthorized saying why not."""
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise Unauthorized("the bearer token is not a JWT")
        head_seg, payload_seg, sig_seg = token.split(".")
        header = self._header(head_seg)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthorized(f"token algorithm {str(alg)[:16]!r} is not accepted (HS256, ES256)")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("the token's kid is not a string")
        keys = [k for k in self.keys() if k.alg == alg and (kid is None or k.kid == kid)]
        if not keys:
            if kid is not None and self.on_unknown_kid is not None:
                self.on_unknown_kid(kid)
            raise Unauthorized(f"no {alg} key {kid!r} to verify the token with" if kid else
                               f"no {alg} key to verify the token with")
        signature = _segment(sig_seg, "signature")
        signing_input = f"{head_seg}.{payload_seg}".encode("ascii")
        # The signature is checked by PyJWT's algorithm object bound to each key (HMAC-SHA256
        # with compare_digest; ECDSA P-256 via cryptography) on the key it prepared once. Not
        # jwt.decode: per token it re-prepared the key (parsing an HMAC secret as JSON, PEM and
        # DER) and checked the alphabet one character at a time, 100 us of a licence's CPU.
        if not any(k.jwk.Algorithm.verify(signing_input, k.jwk.key, signature)
                   for k in keys[:8]):  # bounded: a token without a kid is tried on a few keys at most
            raise Unauthorized("the token's signature does not verify")
        try:  # the payload is parsed only once it is known to come from the issuer
            claims = json.loads(_segment(payload_seg, "payload").decode("utf-8"))
        except (ValueError, RecursionError):
            raise Unauthorized("the token's payload is malformed") from None
        if not isinstance(claims, dict):
            raise Unauthorized("the token's payload is not a JSON object")
        return self._claims(claims, kid)

    def _claims(self, claims: dict[str, Any], kid: str | None) -> Entitlement:
        now = self.clock()
        exp = _number(claims, "exp", required=True)
        iat = _number(claims, "iat", required=True)
        nbf = _number(claims, "nbf", required=False)
        rental_end = _number(claims, "rental_end", required=False)
        assert exp is not None and iat is not None
        if now >= exp + self.leeway_s:
            raise Unauthorized("the token has expired")
        if iat > now + self.leeway_s:
            raise Unauthorized("the token is issued in the future")
        if exp - iat > self.max_lifetime_s:
            raise Unauthorized(f"the token lives longer than {self.max_lifetime_s:.0f} s")
        if nbf is not None and now + self.leeway_s < nbf:
            raise Unauthorized("the token is not valid yet")
        if rental_end is not None and now >= rental_end:
            raise Unauthorized("the rental window is over")
        user = _string(claims, "sub")
        if user is None:
            raise Unauthorized("the token has no 'sub' (user) claim")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise Unauthorized("the token is from another issuer")
        if self.audience is not None:
            aud = claims.get("aud")
            if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
                raise Unauthorized("the token is for another audience")
        return Entitlement(user=user, titles=_titles(claims), exp=exp, iat=iat, jti=_string(claims, "jti"),
                           device=_string(claims, "device"), nbf=nbf, rental_end=rental_end, kid=kid)


class ReplayCache:
    """Used ``jti`` values, each remembered until its token's expiry (plus leeway), at most
    ``max_entries`` at once (see the module docstring)."""

    def __init__(self, max_entries: int = 100_000, *, leeway_s: float = 30.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.leeway_s = leeway_s
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._until)

    def _prune(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            until, jti = heapq.heappop(heap)
            if self._until.get(jti) == until:
                del self._until[jti]

    def check(self, jti: str | None, now: float) -> None:
        """Raise Unauthorized if ``jti`` was used and has not expired (or is missing)."""
        if jti is None:
            raise Unauthorized("a single-use token needs a 'jti' claim")
        until = self._until.get(jti)
        if until is not None and until > now:
            raise Unauthorized("the token was already used (single-use)")

    def use(self, jti: str | None, exp: float, now: float) -> None:
        """Record ``jti`` as used until ``exp``; raises Unauthorized on a replay and
        TooManyRequests when the table is full of unexpired ids."""
        self.check(jti, now)
        assert jti is not None
        self._prune(now)
        if len(self._until) >= self.max_entries:
            wait = max(1, int(self._heap[0][0] - now) + 1) if self._heap else 1
            raise TooManyRequests("too many single-use tokens in flight; retry later", retry_after_s=wait)
        until = exp + self.leeway_s
        self._until[jti] = until
        heapq.heappush(self._heap, (until, jti))


def sign_token(claims: dict[str, Any], key: Any, alg: str, *, kid: str | None = None) -> str:
    """A compact JWT of ``claims`` (for ``headwater entitle`` and tests; the origin's playback
    API issues the real ones). ``key``: the HS256 secret bytes or an ES256 private key."""
    if alg not in ALGORITHMS:
        raise ValueError(f"unsupported algorithm {alg!r}")
    headers = {"kid": kid} if kid else None
    # json round trip: a claim PyJWT cannot serialise fails here, not in a browser.
    json.dumps(claims)
    return jwt.encode(claims, key, algorithm=alg, headers=headers)
