"""RFC 9068 JWT access tokens, verified sans-IO with PyJWT.

One JWT library in the project: PyJWT, which the licence server already uses
(``headwater.drm.licence.entitlement`` says why over joserfc/authlib); this module takes the
same care of it: the key is chosen by the token's ``kid`` among keys bound to their algorithm,
PyJWT is told that one algorithm, and its own time checks are off (it reads the system clock):
time is checked here on the injected clock.

What a token must be (RFC 9068 §2 and §4):

- header ``typ`` ``at+jwt`` (or ``application/at+jwt``): an ID token or any other JWT signed by
  the same issuer is not an access token;
- ``alg`` ES256 (the built-in issuer) or RS256 (what most OIDC providers sign with); never
  ``none`` nor HMAC (a resource server holds no shared secret);
- ``iss`` the configured issuer, ``aud`` (a string or an array) naming the configured audience;
- ``exp`` in the future, ``iat`` not in the future (both with ``leeway_s``), ``nbf`` if present;
- ``sub`` and ``client_id`` strings; ``scope`` a space-separated string (RFC 8693 §4.2).

A missing or failing token is :class:`Unauthorized` (401); a good token without the route's
scope is :class:`Forbidden` (403, ``insufficient_scope``, RFC 6750 §3.1).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import Forbidden, Unauthorized

__all__ = ["ALGORITHMS", "AccessKey", "AccessToken", "AccessTokenVerifier", "bearer_token", "MAX_TOKEN_CHARS"]

ALGORITHMS = ("ES256", "RS256")
TOKEN_TYPES = ("at+jwt", "application/at+jwt")
MAX_TOKEN_CHARS = 8192
_MAX_STR = 256
_MAX_SCOPES = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessKey:
    """A public key access tokens may be verified with: its ``kid``, algorithm and key object
    (ES256: a P-256 public key; RS256: an RSA public key of at least 2048 bits)."""

    kid: str
    alg: str
    key: Any
    jwk: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.alg == "ES256":
            if not (isinstance(self.key, ec.EllipticCurvePublicKey) and isinstance(self.key.curve, ec.SECP256R1)):
                raise ValueError("an ES256 key is a P-256 public key")
            data = jwt.algorithms.ECAlgorithm.to_jwk(self.key, as_dict=True)
        elif self.alg == "RS256":
            if not isinstance(self.key, rsa.RSAPublicKey) or self.key.key_size < 2048:
                raise ValueError("an RS256 key is an RSA public key of at least 2048 bits")
            data = jwt.algorithms.RSAAlgorithm.to_jwk(self.key, as_dict=True)
        else:
            raise ValueError(f"unsupported algorithm {self.alg!r}")
        object.__setattr__(self, "jwk", jwt.PyJWK(data, algorithm=self.alg))


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessToken:
    """What a verified access token says."""

    subject: str
    client_id: str
    scopes: frozenset[str]
    exp: float
    iat: float
    jti: str | None = None

    def require(self, scope: str) -> None:
        """Raise Forbidden unless the token carries ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(f"this route needs the scope {scope!r}")


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1)."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this route needs 'Authorization: Bearer <access token>'")
    return token


def _header(token: str) -> dict[str, Any]:
    seg = token.partition(".")[0]
    if len(seg) > 1024:
        raise Unauthorized("the token's header is too long")
    try:
        header = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    except (ValueError, binascii.Error):
        raise Unauthorized("the token's header is malformed") from None
    if not isinstance(header, dict):
        raise Unauthorized("the token's header is malformed")
    return header


def _number(claims: dict[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise Unauthorized(f"the token has no {name!r} claim")
        return None
    # Python's JSON reads Infinity and NaN: an exp of Infinity would never expire, and every
    # comparison with NaN is False (never expired, never in the future).
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer past a float's range
        number = math.nan
    if not math.isfinite(number):
        raise Unauthorized(f"the token's {name!r} claim is not a number")
    return number


def _string(claims: dict[str, Any], name: str, required: bool) -> str | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_STR:
        raise Unauthorized(f"the token's {name!r} claim is not a string of 1..{_MAX_STR} characters")
    return value


class AccessTokenVerifier:
    """Verifies access tokens against the keys ``keys()`` returns at each call (the built-in
    issuer's key, or an issuer's JWKS as last fetched). ``on_unknown_kid`` lets the JWKS fetcher
    refresh early when a token names a key it does not have (a rotated key)."""

    def __init__(self, keys: Callable[[], Sequence[AccessKey]], *, issuer: str, audience: str,
                 clock: Callable[[], float], leeway_s: float = 30.0,
                 on_unknown_kid: Callable[[str], None] | None = None) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.clock = clock
        self.leeway_s = leeway_s
        self.on_unknown_kid = on_unknown_kid
        self._options = {"verify_signature": True, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "verify_aud": False, "verify_iss": False, "require": []}

    def verify(self, token: str) -> AccessToken:
        """The access token ``token`` is; raises Unauthorized saying why not."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise Unauthorized("the bearer token is not a JWT")
        header = _header(token)
        if str(header.get("typ", "")).lower() not in TOKEN_TYPES:
            raise Unauthorized("the token is not a JWT access token (typ must be at+jwt, RFC 9068)")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthorized(f"token algorithm {str(alg)[:16]!r} is not accepted ({', '.join(ALGORITHMS)})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("the token names no key (kid)")
        key = next((k for k in self.keys() if k.kid == kid and k.alg == alg), None)
        if key is None:
            if self.on_unknown_kid is not None:
                self.on_unknown_kid(kid)
            raise Unauthorized(f"no {alg} key {kid[:64]!r} to verify the token with")
        try:
            claims = jwt.decode(token, key.jwk, algorithms=[alg], options=self._options)
        except jwt.InvalidSignatureError:
            raise Unauthorized("the token's signature does not verify") from None
        except jwt.PyJWTError as e:
            raise Unauthorized(f"the token is malformed: {type(e).__name__}") from None
        if not isinstance(claims, dict):
            raise Unauthorized("the token's claims are not an object")
        return self._claims(claims)

    def _claims(self, claims: dict[str, Any]) -> AccessToken:
        now = self.clock()
        if claims.get("iss") != self.issuer:
            raise Unauthorized("the token is from another issuer")
        aud = claims.get("aud")
        if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
            raise Unauthorized("the token is for another audience")
        exp = _number(claims, "exp", True)
        iat = _number(claims, "iat", True)
        nbf = _number(claims, "nbf", False)
        assert exp is not None and iat is not None
        if now >= exp + self.leeway_s:
            raise Unauthorized("the token has expired")
        if iat > now + self.leeway_s:
            raise Unauthorized("the token is issued in the future")
        if nbf is not None and now + self.leeway_s < nbf:
            raise Unauthorized("the token is not valid yet")
        subject = _string(claims, "sub", True)
        client_id = _string(claims, "client_id", True)
        scope = claims.get("scope", "")
        if not isinstance(scope, str) or len(scope) > 4096:
            raise Unauthorized("the token's scope is not a space-separated string")
        scopes = frozenset(scope.split())
        if len(scopes) > _MAX_SCOPES:
            raise Unauthorized("the token has too many scopes")
        assert subject is not None and client_id is not None
        return AccessToken(subject=subject, client_id=client_id, scopes=scopes, exp=exp, iat=iat,
                           jti=_string(claims, "jti", False))
