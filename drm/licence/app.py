"""The licence server's HTTP app: ``POST /licence`` (alias ``/licence/clearkey``), classic HLS
key delivery ``GET /keys/<KID hex>``, and their CORS.

A request goes through, in this order (each refusal a JSON ``{"error": code, "message": ...}``
with its status from :func:`~headwater.drm.errors.wire_of`, and an audit line):

1. the route (404) and method (405; ``OPTIONS`` is the CORS preflight);
2. the origin, when the request has one: outside ``allowed_origins`` -> 403;
3. the client address's rate limit (429 + Retry-After), before any CPU is spent on the token;
4. the bearer token (``Authorization: Bearer``): missing or failing -> 401;
5. the user's rate limit (429);
6. the body: at most ``max_request_bytes`` (413), a ClearKey request (400);
7. the keys: an unknown KID -> 404; a KID of a title the token does not name -> 403; the
   title's policy (session type, device) -> 403; single-use tokens: a replay -> 401;
8. the licence: ``{"keys": [{"kty": "oct", "kid", "k"}], "type"}``, ``Cache-Control: no-store``.

Key delivery (``METHOD=AES-128`` playlists name ``<licence URL's folder>/keys/<KID hex>``):
``GET /keys/<32 hex digits>`` goes through the same steps 2-5 and 7 (no body; the session type
checked against the title's policy is ``temporary``) and answers the raw 16-byte key as
``application/octet-stream``, ``Cache-Control: no-store``; its audit line's ``type`` is
``aes128-key``. A KID in any other form is 404 before any token is read.

CORS (what browsers need of a licence server): a licence request carries ``Authorization``, so
browsers preflight it; ``Access-Control-Allow-Headers`` names ``Authorization, Content-Type``
(``*`` does not cover Authorization), and since dash.js sends credentials with such requests,
``Access-Control-Allow-Origin`` is the request's exact origin with
``Access-Control-Allow-Credentials: true`` (never ``*``), plus ``Vary: Origin``. Every answer to
an allowed origin carries them, errors included, so the player can read the JSON error.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.http import BodyTooLarge, Request, Response
from headwater.http.errors import ClientDisconnected

from ..errors import (
    BadRequest,
    DrmError,
    Forbidden,
    KeyStoreError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    wire_of,
)
from .audit import AuditLog, LicenceGranted, LicenceRefused
from .clearkey import build_response, parse_request
from .entitlement import Entitlement, ReplayCache, TokenVerifier
from .policy import Policy, licence_end
from .ratelimit import LicenceRateLimiter

__all__ = ["LicenceApp", "ROUTES"]

ROUTES = frozenset({"/licence", "/licence/clearkey", "/licence/ClearKey"})
KEY_ROUTE = re.compile(r"/keys/([0-9a-fA-F]{32})")
KEY_SESSION_TYPE = "temporary"   # what the title's policy is asked about a key delivery
_ALLOW = "POST, OPTIONS"
_ALLOW_KEYS = "GET, OPTIONS"
_ALLOW_HEADERS = "Authorization, Content-Type"


class _Refusal(Exception):
    """A refusal with what the audit line should know of the request so far."""

    def __init__(self, error: DrmError, user: str | None, titles: frozenset[str], kids: tuple[bytes, ...]):
        self.error, self.user, self.titles, self.kids = error, user, titles, kids


class LicenceApp:
    """The request path of one licence server process (see the module docstring).

    ``keys`` is the key store (``get_many(kids) -> [ContentKey | None]``)."""

    def __init__(self, *, keys: Any, verifier: TokenVerifier, policy: Policy, limiter: LicenceRateLimiter,
                 replay: ReplayCache, audit: AuditLog | Any, allowed_origins: tuple[str, ...] = (),
                 cors_max_age_s: int = 600, max_request_bytes: int = 8192, max_kids: int = 32,
                 clock: Clock = SYSTEM_CLOCK, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.keys = keys
        self.verifier = verifier
        self.policy = policy
        self.limiter = limiter
        self.replay = replay
        self.audit = audit
        self.allowed_origins = frozenset(allowed_origins)
        self.cors_max_age_s = cors_max_age_s
        self.max_request_bytes = max_request_bytes
        self.max_kids = max_kids
        self.clock = clock
        self.on_error = on_error
        self.counts = {"granted": 0, "refused": 0, "preflights": 0}

    # --- CORS ----------------------------------------------------------------------------------

    def _origin_ok(self, origin: str | None) -> bool:
        return origin is None or not self.allowed_origins or origin in self.allowed_origins

    def _cors(self, origin: str | None) -> list[tuple[str, str]]:
        if origin is None or not self._origin_ok(origin):
            return []
        return [("access-control-allow-origin", origin), ("access-control-allow-credentials", "true"),
                ("vary", "Origin")]

    def _preflight(self, request: Request, origin: str | None, allow: str = _ALLOW) -> Response:
        self.counts["preflights"] += 1
        if origin is None or not self._origin_ok(origin):
            return self._json(403, {"error": Forbidden.code, "message": "this origin may not request licences"},
                              [])
        headers = self._cors(origin) + [
            ("access-control-allow-methods", allow), ("access-control-allow-headers", _ALLOW_HEADERS),
            ("access-control-max-age", str(self.cors_max_age_s)), ("content-length", "0"),
            ("cache-control", "no-store")]
        return Response(204, headers, b"")

    # --- the request path ----------------------------------------------------------------------

    @staticmethod
    def _json(status: int, doc: dict[str, Any], extra: list[tuple[str, str]]) -> Response:
        body = json.dumps(doc, separators=(",", ":")).encode()
        return Response(status, [("content-type", "application/json"), ("content-length", str(len(body))),
                                 ("cache-control", "no-store"), *extra], body)

    def _error(self, exc: DrmError, origin: str | None, allow: str = _ALLOW) -> Response:
        status, code = wire_of(exc)
        extra = self._cors(origin)
        if isinstance(exc, TooManyRequests):
            extra.append(("retry-after", str(exc.retry_after_s)))
        if isinstance(exc, MethodNotAllowed):
            extra.append(("allow", allow))
        if isinstance(exc, Unauthorized):
            extra.append(("www-authenticate", 'Bearer realm="licence"'))
        return self._json(status, {"error": code, "message": str(exc)}, extra)

    async def __call__(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        client = request.client[0] if request.client else ""
        key_route = KEY_ROUTE.fullmatch(request.path)
        allow = _ALLOW_KEYS if key_route else _ALLOW
        try:
            if key_route:
                if request.method == "OPTIONS":
                    return self._preflight(request, origin, _ALLOW_KEYS)
                if request.method != "GET":
                    raise _Refusal(MethodNotAllowed(f"{request.method[:16]} is not allowed here: GET /keys/<KID>"),
                                   None, frozenset(), (bytes.fromhex(key_route.group(1)),))
                return await self._key(request, origin, client, bytes.fromhex(key_route.group(1)))
            if request.path not in ROUTES:
                raise _Refusal(NotFound(f"no route {request.path[:100]!r}: POST /licence or GET /keys/<KID hex>"),
                               None, frozenset(), ())
            if request.method == "OPTIONS":
                return self._preflight(request, origin)
            if request.method != "POST":
                raise _Refusal(MethodNotAllowed(f"{request.method[:16]} is not allowed here: POST /licence"),
                               None, frozenset(), ())
            return await self._licence(request, origin, client)
        except _Refusal as r:
            self.counts["refused"] += 1
            status, code = wire_of(r.error)
            self.audit.record(LicenceRefused(time=self.clock.time(), client=client, status=status, code=code,
                                             reason=str(r.error), user=r.user, titles=sorted(r.titles),
                                             kids=r.kids))
            if isinstance(r.error, KeyStoreError) and self.on_error is not None:
                self.on_error(r.error)
            return self._error(r.error, origin, allow)

    async def _licence(self, request: Request, origin: str | None, client: str) -> Response:
        user: str | None = None
        titles: frozenset[str] = frozenset()
        kids: tuple[bytes, ...] = ()
        try:
            ent = self._entitlement(request, origin, client)
            user = ent.user
            declared = request.body.content_length
            if declared is not None and declared > self.max_request_bytes:
                raise PayloadTooLarge(f"a licence request is at most {self.max_request_bytes} bytes")
            try:
                body = await request.body.read_all(self.max_request_bytes)
            except BodyTooLarge:
                raise PayloadTooLarge(f"a licence request is at most {self.max_request_bytes} bytes") from None
            except ClientDisconnected:
                raise BadRequest("the client went away before its request body was complete") from None
            req = parse_request(body, max_bytes=self.max_request_bytes, max_kids=self.max_kids)
            kids = req.kids
            granted, titles = self._keys_for(ent, req.kids)
            now, end = self._grantable(ent, titles, req.type)
        except DrmError as e:
            raise _Refusal(e, user, titles, kids) from None
        body = build_response(granted, req.type)
        self.counts["granted"] += 1
        self.audit.record(LicenceGranted(time=now, user=ent.user, client=client, titles=sorted(titles),
                                         kids=req.kids, session_type=req.type, licence_end=end, device=ent.device))
        return Response(200, [("content-type", "application/json"), ("content-length", str(len(body))),
                              ("cache-control", "no-store"), ("pragma", "no-cache"), *self._cors(origin)], body)

    def _entitlement(self, request: Request, origin: str | None, client: str) -> Entitlement:
        """Steps 2-5: the origin, the address's rate limit, the bearer token, the user's limit."""
        if not self._origin_ok(origin):
            raise Forbidden("this origin may not request licences")
        self.limiter.check_address(client, self.clock.monotonic())
        auth = request.headers.get("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a licence request needs 'Authorization: Bearer <entitlement token>'")
        ent = self.verifier.verify(token.strip())
        self.limiter.check_user(ent.user, self.clock.monotonic())
        return ent

    def _grantable(self, ent: Entitlement, titles: frozenset[str], session_type: str) -> tuple[float, float]:
        """The titles' policy for this token, now: (now, until when keys are obtainable); a
        single-use token is spent here."""
        self.policy.check(titles, session_type, device=ent.device)
        now = self.clock.time()
        end = licence_end(self.policy, titles, iat=ent.iat, exp=ent.exp, rental_end=ent.rental_end)
        if now >= end:
            raise Forbidden("the licence period for this title under this token is over")
        if self.policy.single_use(ent.titles):
            self.replay.use(ent.jti, ent.exp, now)
        return now, end

    async def _key(self, request: Request, origin: str | None, client: str, kid: bytes) -> Response:
        """``GET /keys/<KID hex>``: the raw content key for an entitled token."""
        user: str | None = None
        titles: frozenset[str] = frozenset()
        try:
            ent = self._entitlement(request, origin, client)
            user = ent.user
            granted, titles = self._keys_for(ent, (kid,))
            now, end = self._grantable(ent, titles, KEY_SESSION_TYPE)
        except DrmError as e:
            raise _Refusal(e, user, titles, (kid,)) from None
        self.counts["granted"] += 1
        self.audit.record(LicenceGranted(time=now, user=ent.user, client=client, titles=sorted(titles),
                                         kids=(kid,), session_type="aes128-key", licence_end=end, device=ent.device))
        key = granted[0][1]
        return Response(200, [("content-type", "application/octet-stream"), ("content-length", str(len(key))),
                              ("cache-control", "no-store"), ("pragma", "no-cache"), *self._cors(origin)], key)

    def _keys_for(self, ent: Entitlement, kids: tuple[bytes, ...]) -> tuple[list[tuple[bytes, bytes]], frozenset[str]]:
        found = self.keys.get_many(kids)
        missing = [k for k, f in zip(kids, found) if f is None]
        if missing:
            raise NotFound(f"no key with KID {missing[0].hex()}")
        titles = frozenset(f.title for f in found if f is not None)
        other = sorted(titles - ent.titles)
        if other:
            raise Forbidden(f"the token does not entitle its holder to title {other[0]}")
        return [(f.kid, f.key) for f in found if f is not None], titles
