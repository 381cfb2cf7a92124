"""Sign-in for people, sans-IO: the authorization-code grant with PKCE (RFC 6749 §4.1, RFC 7636)
for the origin's own web page, and the users' passwords.

A browser cannot keep a client secret, so the page is a *public* client (``PUBLIC_CLIENT``) and
proves that the code it redeems is its own with PKCE: it makes a random ``code_verifier``, sends
``code_challenge = BASE64URL(SHA256(verifier))`` (only ``S256``; ``plain`` would hand the secret
to whoever sees the URL) to ``/oauth/authorize``, and the verifier itself to ``/oauth/token``.

- :func:`parse_authorize`: the sign-in request (``response_type=code``, ``client_id``,
  ``redirect_uri``, ``code_challenge``, ``code_challenge_method=S256``, ``state``, ``scope``).
  The redirect URI must be a path on this very site (its scheme and host those the request came
  to): the page is the only client, so no registration is needed, and a code is never sent
  elsewhere.
- :class:`CodeStore`: codes live ``CODE_TTL_S`` (RFC 6749 §4.1.2 recommends at most 10
  minutes; the page redeems at once), are used at most once (a second try, even with the right
  verifier, fails), and at most ``max_codes`` are outstanding: a flood of sign-ins costs bounded
  memory (the oldest unexpired code is dropped first).
- :class:`UserDirectory`: ``[[origin.users]]``; a password is checked against its scrypt hash
  (RFC 7914) or, for a ``"sealed"`` password (random, made on first use), the SHA-256 of it.
  An unknown user costs the same hash as a known one, so the time does not tell which exist.
- :class:`LoginThrottle`: bounded attempts. Each try takes one from its address's budget (the
  token endpoint's) and one from the user name's (``user_attempts`` then one per
  ``user_refill_s``): a guesser spread over many addresses still gets only a few tries an hour at
  one account. The cost: such a guesser can delay that user's own sign-in by a minute or so; a
  guessable account is the worse failure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import parse_qsl, urlsplit

from headwater.tokenbucket import RateLimit, TokenBuckets

from ..errors import BadAuthorizationCode, BadAuthorizeRequest, InvalidScope, LoginFailed, RateLimited

__all__ = ["PUBLIC_CLIENT", "CODE_TTL_S", "AuthorizeRequest", "CodeGrant", "CodeStore", "UserDirectory", "User",
           "LoginThrottle", "parse_authorize", "parse_form", "MAX_FORM", "s256", "hash_password", "check_scrypt",
           "MAX_PASSWORD"]

PUBLIC_CLIENT = "headwater-web"
CODE_TTL_S = 60.0
MAX_PASSWORD = 256
MAX_FORM = 4096  # bytes of a sign-in form or query
_PKCE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")  # RFC 7636 §4.1 (verifier) and §4.2 (S256 challenge: 43)
_STATE = re.compile(r"^[\x21-\x7e]{0,256}$")
_USER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SCRYPT = re.compile(r"^scrypt\$(\d{1,2})\$(\d{1,2})\$(\d{1,2})\$([A-Za-z0-9+/=_-]{16,88})\$([A-Za-z0-9+/=_-]{43,88})$")
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 15, 8, 1  # ~50 ms and 32 MiB per check


def s256(verifier: str) -> str:
    """The S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def parse_form(raw: bytes | str) -> dict[str, str]:
    """A sign-in query or form body (UTF-8, at most 16 fields, none twice, at most ``MAX_FORM``
    bytes); :class:`BadAuthorizeRequest` otherwise."""
    if len(raw) > MAX_FORM:
        raise BadAuthorizeRequest(f"a sign-in request is at most {MAX_FORM} bytes")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise BadAuthorizeRequest("not a form of at most 16 UTF-8 fields") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise BadAuthorizeRequest(f"{k[:40]!r} is given twice")
        out[k] = v
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizeRequest:
    """A checked sign-in request."""

    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    scopes: tuple[str, ...] | None


def parse_authorize(params: Mapping[str, str], own_origin: str, known_scopes: tuple[str, ...]) -> AuthorizeRequest:
    """The sign-in request in ``params`` (the query of ``GET /oauth/authorize`` or the hidden
    fields of its form), for a site at ``own_origin`` (``scheme://host[:port]``)."""
    if params.get("client_id") != PUBLIC_CLIENT:
        raise BadAuthorizeRequest(f"client_id must be {PUBLIC_CLIENT!r} (this site's own page)")
    redirect = params.get("redirect_uri", "")
    parts = urlsplit(redirect)
    if (len(redirect) > 512 or f"{parts.scheme}://{parts.netloc}" != own_origin or not parts.path.startswith("/")
            or parts.path.startswith("//") or parts.fragment or parts.username or parts.password):
        raise BadAuthorizeRequest("redirect_uri must be a page of this site")
    if params.get("response_type") != "code":
        raise BadAuthorizeRequest("response_type must be code")
    if params.get("code_challenge_method") != "S256":
        raise BadAuthorizeRequest("code_challenge_method must be S256 (PKCE, RFC 7636)")
    challenge = params.get("code_challenge", "")
    if len(challenge) != 43 or not _PKCE.match(challenge):
        raise BadAuthorizeRequest("code_challenge must be BASE64URL(SHA256(code_verifier)), 43 characters")
    state = params.get("state", "")
    if not _STATE.match(state):
        raise BadAuthorizeRequest("state is at most 256 printable characters")
    scope = params.get("scope")
    scopes = None
    if scope is not None:
        scopes = tuple(dict.fromkeys(scope.split()))
        if not 1 <= len(scopes) <= 16 or any(s not in known_scopes for s in scopes):
            raise InvalidScope(f"scope is 1..16 of {', '.join(known_scopes)}")
    return AuthorizeRequest(client_id=PUBLIC_CLIENT, redirect_uri=redirect, state=state, code_challenge=challenge,
                            scopes=scopes)


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeGrant:
    """What a code stands for until it is redeemed."""

    user: str
    scopes: tuple[str, ...]
    redirect_uri: str
    code_challenge: str
    expires: float


class CodeStore:
    """Outstanding authorization codes (see the module docstring); time is the caller's."""

    def __init__(self, *, ttl_s: float = CODE_TTL_S, max_codes: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_codes = max_codes
        self._codes: OrderedDict[str, CodeGrant] = OrderedDict()  # oldest first
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._codes)

    def issue(self, *, user: str, scopes: tuple[str, ...], request: AuthorizeRequest, now: float) -> str:
        """A new single-use code for ``user``."""
        while self._codes:
            oldest = next(iter(self._codes.values()))
            if oldest.expires > now and len(self._codes) < self.max_codes:
                break
            self._codes.popitem(last=False)
            if oldest.expires > now:
                self.dropped += 1
        code = secrets.token_urlsafe(32)
        self._codes[code] = CodeGrant(user=user, scopes=scopes, redirect_uri=request.redirect_uri,
                                      code_challenge=request.code_challenge, expires=now + self.ttl_s)
        return code

    def redeem(self, *, code: str, redirect_uri: str, verifier: str, now: float) -> CodeGrant:
        """The grant of ``code``, which is spent whatever the outcome (RFC 6749 §4.1.2)."""
        grant = self._codes.pop(code, None) if len(code) <= 128 else None
        if grant is None or grant.expires <= now:
            raise BadAuthorizationCode("unknown, used or expired code")
        if redirect_uri != grant.redirect_uri:
            raise BadAuthorizationCode("redirect_uri differs from the sign-in request's")
        if not _PKCE.match(verifier) or not hmac.compare_digest(s256(verifier), grant.code_challenge):
            raise BadAuthorizationCode("code_verifier does not match the code_challenge")
        return grant


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None, log_n: int = SCRYPT_LOG_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    """``scrypt$logN$r$p$salt$hash`` (base64url) for cluster.toml's ``password_scrypt``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=1 << log_n, r=r, p=p, maxmem=256 << 20, dklen=32)
    return f"scrypt${log_n}${r}${p}${_b64(salt)}${_b64(digest)}"


def check_scrypt(text: str) -> tuple[int, int, int, bytes, bytes]:
    """(logN, r, p, salt, hash) of a ``password_scrypt`` value; ValueError if it is not one
    (or its cost is outside 2^10..2^20, r 1..32, p 1..16: a check must stay bounded)."""
    m = _SCRYPT.match(text)
    if m is None:
        raise ValueError("not scrypt$logN$r$p$salt$hash (headwater password --hash prints one)")
    log_n, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (10 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt cost out of bounds (logN 10..20, r 1..32, p 1..16)")
    salt, digest = _unb64(m[4]), _unb64(m[5])
    if len(salt) < 8 or len(digest) < 32:
        raise ValueError("scrypt salt of at least 8 bytes and hash of at least 32")
    return log_n, r, p, salt, digest


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """A person who signs in: their name (the tokens' ``sub``), scopes and password check."""

    name: str
    scopes: tuple[str, ...]
    scrypt: str | None = None  # password_scrypt
    sha256: bytes | None = None  # a sealed (random, high-entropy) password's SHA-256


_DUMMY = hash_password("no such user", salt=b"\0" * 16, log_n=10)


class UserDirectory:
    """Users by name; :meth:`verify` checks a password (blocking: scrypt runs ~50 ms; the
    caller runs it off the event loop)."""

    def __init__(self, users: Mapping[str, User]) -> None:
        self.users = dict(users)

    def verify(self, name: str, password: str) -> User:
        """The user, if ``password`` is theirs; :class:`LoginFailed` otherwise."""
        user = self.users.get(name) if _USER.match(name) else None
        if len(password) > MAX_PASSWORD:
            raise LoginFailed("unknown user or wrong password")
        raw = password.encode("utf-8", "surrogateescape")
        # Every answer costs one scrypt, a sealed password's user's too (whose check is a SHA-256):
        # otherwise the time of a refusal would tell which names are users with sealed passwords.
        log_n, r, p, salt, digest = check_scrypt(user.scrypt if user is not None and user.scrypt else _DUMMY)
        got = hashlib.scrypt(raw, salt=salt, n=1 << log_n, r=r, p=p, maxmem=256 << 20, dklen=len(digest))
        if user is not None and user.sha256 is not None:
            ok = hmac.compare_digest(hashlib.sha256(raw).digest(), user.sha256)
        else:
            ok = hmac.compare_digest(got, digest) and user is not None
        if user is None or not ok:
            raise LoginFailed("unknown user or wrong password")
        return user


class LoginThrottle:
    """Bounded sign-in attempts per user name (see the module docstring); the address budget is
    the app's token-request limiter."""

    def __init__(self, *, attempts: float = 10, refill_s: float = 60.0, max_users: int = 10_000) -> None:
        self.limit = RateLimit(requests_per_s=1.0 / refill_s, burst=attempts)
        self.buckets = TokenBuckets(max_users)
        self.refused = 0

    def check(self, name: str, now: float) -> None:
        """Take one attempt at ``name``; RateLimited without one."""
        wait = self.buckets.take(("user", name[:64]), self.limit, now)
        if wait:
            self.refused += 1
            raise RateLimited("too many sign-in attempts for this user: wait a little",
                              retry_after_s=max(1, math.ceil(wait)))
