"""The origin's HTTP app: routing, bearer tokens and scopes, CORS, and JSON errors.

Routes (all JSON errors ``{"error": code, "message": ...}``, statuses from
:func:`~headwater.origin.errors.wire_of`):

==========================================  ===========  ================================
``POST /oauth/token``                       none         the built-in issuer (client credentials;
                                                         authorization code + PKCE for the page)
``GET``/``POST /oauth/authorize``           none         the sign-in form (:mod:`.auth.login`)
``GET /``, ``/title/{id}``, ``/upload``,    none         the web page (:mod:`.web.site`)
``/signed-in``, ``/static/...``
``GET /.well-known/jwks.json``              none         its public key
``GET /.well-known/oauth-authorization-server``  none    its metadata (RFC 8414)
``OPTIONS /uploads``, ``/uploads/{id}``     none         tus discovery; the CORS preflight
``POST /uploads``                           ``upload``   tus creation (with upload)
``HEAD /uploads/{id}``                      ``upload``   the upload's offset
``PATCH /uploads/{id}``                     ``upload``   bytes at the offset
``DELETE /uploads/{id}``                    ``upload``   termination
``/api/titles``, ``/api/titles/{id}`` …     per route    the catalogue (:mod:`.api.titles`)
``GET /api/search``, ``/api/categories``,   none         search (:mod:`.api.search`)
``/api/languages``
``GET``/``HEAD /titles/{id}/v{n}/{file}``   none         the CDN's origin (:mod:`.delivery.serve`)
``GET /api/titles/{id}/play``               ``view``     playback (:mod:`.delivery.playback`)
==========================================  ===========  ================================

The JSON API's routes live with their handlers (``origin/api/``, one :class:`~.api.Route` list
per module); this app matches them in :data:`OriginApp.routes` order and adds CORS. Its writes
(POST, PATCH, DELETE) take one of the client's writes per second (``[origin.rate_limits]
writes_per_client_*``, the budget tus writes share) before the handler reads the body.

Scopes per route live in :data:`ROUTE_SCOPES` (the catalogue's routes add theirs there:
``titles:write``, ``titles:read``, ``view``). A missing or bad token is 401 with
``WWW-Authenticate: Bearer error="invalid_token"``; a good one without the scope is 403 with
``error="insufficient_scope"`` (RFC 6750 §3). An upload belongs to its token's ``sub``.

CORS, for browser tus clients (tus-js-client, Uppy): an allowed ``Origin`` (``allowed_origins``,
or any when empty) is echoed with ``Vary: Origin``; the preflight allows the tus methods and
request headers, and every answer exposes the tus headers (``Location``, ``Upload-Offset``, …),
which a script cannot read otherwise. Tokens travel in ``Authorization``, never cookies, so no
credentials mode is needed.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

import anyio

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.http import BodyTooLarge, Request, Response
from headwater.http.errors import HttpError
from headwater.metrics import Registry

from .auth.issuer import MAX_TOKEN_REQUEST, Issuer, parse_token_request
from .auth.login import MAX_FORM, LoginThrottle, UserDirectory, parse_authorize, parse_form
from .auth.ratelimit import RateLimiter, RateLimits
from .auth.tokens import AccessToken, AccessTokenVerifier, bearer_token
from .catalogue import CatalogueError
from .config import SCOPES
from .errors import (
    Forbidden,
    InvalidClient,
    BadAuthorizeRequest,
    InvalidGrant,
    InvalidScope,
    LoginFailed,
    MethodNotAllowed,
    NotFound,
    OriginError,
    OriginNotAllowed,
    TooManyRequests,
    Unauthorized,
    from_catalogue,
    wire_of,
)
from .api import Route
from .delivery.objectpath import is_object_path
from .delivery.playback import PlaybackService
from .delivery.serve import ObjectServer
from .upload import tus
from .upload.service import UploadService
from .web.site import WebSite, signin_page

__all__ = ["OriginApp", "ROUTE_SCOPES"]

log = logging.getLogger("headwater.origin")

ROUTE_SCOPES = {"uploads": "upload", "play": "view"}
_PLAY = re.compile(r"/api/titles/([1-9][0-9]{0,17})/play")
_TUS_METHODS = "POST, HEAD, PATCH, DELETE, OPTIONS"
_WRITE_METHODS = frozenset({"POST", "PATCH", "DELETE"})
_ALLOW_HEADERS = ("Authorization, Content-Type, Upload-Length, Upload-Offset, Upload-Metadata, Upload-Checksum, "
                  "Upload-Defer-Length, Upload-Concat, Tus-Resumable, X-HTTP-Method-Override, X-Requested-With")
_EXPOSE_HEADERS = ("Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, Tus-Resumable, "
                   "Tus-Version, Tus-Max-Size, Tus-Extension, Tus-Checksum-Algorithm, WWW-Authenticate")


def _json(status: int, doc: dict[str, Any], extra: list[tuple[str, str]]) -> Response:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Response(status, [("content-type", "application/json"), ("content-length", str(len(body))),
                             ("cache-control", "no-store"), *extra], body)


class OriginApp:
    """The request path of the origin (see the module docstring)."""

    def __init__(self, *, verifier: AccessTokenVerifier, uploads: UploadService, issuer: Issuer | None,
                 allowed_origins: tuple[str, ...] = (), cors_max_age_s: int = 600,
                 rate_limits: RateLimits = RateLimits(), clock: Clock = SYSTEM_CLOCK,
                 on_error: Callable[[BaseException], None] | None = None,
                 routes: Sequence[Route] = (), objects: ObjectServer | None = None,
                 playback: PlaybackService | None = None, registry: Registry | None = None,
                 web: WebSite | None = None, users: UserDirectory | None = None,
                 login_throttle: LoginThrottle | None = None) -> None:
        self.verifier = verifier
        self.web = web
        self.users = users
        self.login_throttle = login_throttle if login_throttle is not None else LoginThrottle()
        # scrypt takes ~50 ms and 32 MiB a check: at most this many at once, whatever the crowd.
        self.password_checks = anyio.CapacityLimiter(4)
        # The JSON API (origin/api/): each module's Route list, matched in order.
        self.routes = list(routes)
        self.objects = objects
        self.playback = playback
        self.uploads = uploads
        self.issuer = issuer
        self.allowed_origins = frozenset(allowed_origins)
        self.cors_max_age_s = cors_max_age_s
        self.clock = clock
        self.on_error = on_error
        self.limiter = RateLimiter(rate_limits)
        self.counts = {"requests": 0, "refused": 0, "tokens_issued": 0, "rate_limited": 0, "sign_ins": 0,
                       "sign_ins_refused": 0}
        # Answers by status class ("2xx" .. "5xx"): the origin-errors alert's 5xx ratio. A
        # registry of its own when none is given, so the app counts the same either way.
        self.responses = (registry or Registry()).counter(
            "hw_origin_responses_total", "Responses the origin's API answered, by status class.", labels=("code",))
        self._by_class = {c: self.responses.labels(f"{c}xx") for c in range(1, 6)}

    # --- CORS ----------------------------------------------------------------------------------

    def _origin_ok(self, origin: str | None) -> bool:
        return origin is not None and (not self.allowed_origins or origin in self.allowed_origins)

    def _cors(self, origin: str | None) -> list[tuple[str, str]]:
        if not self._origin_ok(origin):
            return []
        assert origin is not None
        return [("access-control-allow-origin", origin), ("access-control-expose-headers", _EXPOSE_HEADERS),
                ("vary", "Origin")]

    # --- the request path ----------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        response = await self._answer(request)
        child = self._by_class.get(response.status // 100)
        if child is not None:
            child.inc()
        return response

    async def _answer(self, request: Request) -> Response:
        self.counts["requests"] += 1
        origin = request.headers.get("origin")
        path = request.path
        tus_route = path == "/uploads" or path.startswith("/uploads/")
        try:
            if tus_route:
                return await self._tus(request, origin)
            if self.objects is not None and is_object_path(path):
                return await self.objects(request)
            if self.playback is not None and path.startswith("/api/titles/") and path.endswith("/play"):
                return await self._play(request, origin)
            if path == "/oauth/token":
                return await self._token(request, origin)
            if path in ("/.well-known/jwks.json", "/.well-known/oauth-authorization-server"):
                return self._discovery(request, origin)
            if path == "/oauth/authorize":
                return await self._authorize(request)
            if self.web is not None and self.web.handles(path):
                return await self.web(request)
            if self.objects is not None and is_object_path(path):
                return await self.objects(request)
            if self.playback is not None and _PLAY.fullmatch(path):
                return await self._play(request, origin)
            if path.startswith("/api/"):
                return await self._api(request, origin)
            raise NotFound(f"no route {path[:100]!r}")
        except OriginError as e:
            self.counts["refused"] += 1
            return self._error(e, origin, tus_route=tus_route, oauth=path == "/oauth/token", path=path)
        except CatalogueError as e:  # one raised outside CatalogueRunner (parse_search_params): same table
            self.counts["refused"] += 1
            return self._error(from_catalogue(e), origin, tus_route=tus_route, oauth=False, path=path)
        except HttpError:
            raise  # the core's own (a client gone, a body too slow or too large): it answers them
        except Exception as e:  # noqa: BLE001 - a bug must still answer JSON, and be logged
            log.exception("origin: %s %s failed", request.method, path[:100], extra={"event": "origin.error"})
            if self.on_error is not None:
                self.on_error(e)
            return self._error(OriginError("internal error"), origin, tus_route=tus_route, oauth=False, path=path)

    def _error(self, exc: OriginError, origin: str | None, *, tus_route: bool, oauth: bool,
               path: str = "") -> Response:
        status, code = wire_of(exc)
        extra = self._cors(origin)
        if tus_route:
            extra += tus.common_headers()
            if status == 412:
                extra.append(("tus-version", tus.TUS_VERSION))
        if isinstance(exc, MethodNotAllowed):
            allow = _TUS_METHODS if tus_route else "GET, HEAD" if is_object_path(path) else exc.allow or "GET, POST"
            extra.append(("allow", allow))
        if isinstance(exc, TooManyRequests):
            self.counts["rate_limited"] += 1
        retry_after = getattr(exc, "retry_after_s", None)  # 429, 503 spool_busy and catalogue_unavailable
        if retry_after is not None:
            extra.append(("retry-after", str(retry_after)))
        if oauth:
            if isinstance(exc, InvalidClient):
                extra.append(("www-authenticate", 'Basic realm="headwater-origin"'))
            return _json(status, {"error": code, "error_description": str(exc)}, extra + [("pragma", "no-cache")])
        if isinstance(exc, Unauthorized):
            extra.append(("www-authenticate", 'Bearer realm="headwater-origin", error="invalid_token"'))
        elif isinstance(exc, Forbidden) and code == "insufficient_scope":
            extra.append(("www-authenticate", 'Bearer realm="headwater-origin", error="insufficient_scope"'))
        return _json(status, {"error": code, "message": str(exc)}, extra)

    def authorize(self, request: Request, scope: str) -> AccessToken:
        """The request's access token, which must carry ``scope``."""
        token = self.verifier.verify(bearer_token(request.headers.get("authorization")))
        token.require(scope)
        return token

    # --- the JSON API ----------------------------------------------------------------------------

    async def _api(self, request: Request, origin: str | None) -> Response:
        allowed: set[str] = set()
        for route in self.routes:
            m = route.pattern.fullmatch(request.path)
            if m is None:
                continue
            if request.method not in route.methods:
                allowed |= route.methods
                continue
            if request.method in _WRITE_METHODS:
                self._take_api_write(request)
            response = await route.handler(request, m.groups())
            response.headers += self._cors(origin)
            return response
        if allowed:
            raise MethodNotAllowed(f"{request.method[:16]} {request.path[:100]}", allow=", ".join(sorted(allowed)))
        raise NotFound(f"no route {request.path[:100]!r}")

    def _take_api_write(self, request: Request) -> None:
        """A JSON API write (a title made, edited, withdrawn: a catalogue transaction and maybe a
        job or a CDN purge each) takes one of its client's writes, the budget tus writes take,
        before its body is read. The client is its token's ``sub``; a request without a valid
        token takes none: the handler answers it 401 before reading anything."""
        try:
            token = self.verifier.verify(bearer_token(request.headers.get("authorization")))
        except Unauthorized:
            return
        self.limiter.check_write(token.subject, self.clock.monotonic())

    # --- playback -------------------------------------------------------------------------------

    async def _play(self, request: Request, origin: str | None) -> Response:
        assert self.playback is not None
        m = _PLAY.fullmatch(request.path)
        if m is None:
            raise NotFound(f"no route {request.path[:100]!r}")
        if request.method == "OPTIONS" and request.headers.get("access-control-request-method") is not None:
            # A browser player's preflight: the request carries Authorization, which no
            # wildcard covers, so it is named.
            if not self._origin_ok(origin):
                raise Forbidden("this origin may not call the playback API")
            return Response(204, [*self._cors(origin), ("access-control-allow-methods", "GET"),
                                  ("access-control-allow-headers", "Authorization"),
                                  ("access-control-max-age", str(self.cors_max_age_s))])
        if request.method != "GET":
            raise MethodNotAllowed(f"{request.method[:16]} {request.path[:100]}: GET only")
        token = self.authorize(request, ROUTE_SCOPES["play"])
        doc = await self.playback.play(int(m.group(1)), token.subject)
        return _json(200, doc, [("vary", "Authorization"), *self._cors(origin)])

    # --- OAuth2 ----------------------------------------------------------------------------------

    async def _token(self, request: Request, origin: str | None) -> Response:
        if self.issuer is None:
            raise NotFound("this origin has no built-in issuer: tokens come from the configured OIDC provider")
        if request.method != "POST":
            raise MethodNotAllowed("POST /oauth/token")
        # Before the body is read or a secret hashed: a guesser's budget is its address's.
        self.limiter.check_token_request(request.client[0] if request.client else None, self.clock.monotonic())
        declared = request.body.content_length
        if declared is not None and declared > MAX_TOKEN_REQUEST:
            raise InvalidGrant(f"a token request is at most {MAX_TOKEN_REQUEST} bytes")
        try:
            body = await request.body.read_all(MAX_TOKEN_REQUEST)
        except BodyTooLarge:
            raise InvalidGrant(f"a token request is at most {MAX_TOKEN_REQUEST} bytes") from None
        req = parse_token_request(request.headers.get("authorization"), request.headers.get("content-type"), body)
        doc = self.issuer.grant(req, self.clock.time())
        self.counts["tokens_issued"] += 1
        return _json(200, doc, [("pragma", "no-cache"), *self._cors(origin)])

    async def _authorize(self, request: Request) -> Response:
        """The sign-in form (GET) and its submission (POST): a code redirected to the page."""
        if self.issuer is None or self.users is None:
            raise NotFound("this origin has no built-in issuer: people sign in with the configured OIDC provider")
        own = f"{request.scheme}://{request.host}"
        try:
            if request.method == "GET":
                return signin_page(parse_authorize(parse_form(request.query), own, SCOPES))
            if request.method != "POST":
                raise MethodNotAllowed("GET or POST /oauth/authorize", allow="GET, POST")
            declared = request.body.content_length
            if declared is not None and declared > MAX_FORM:
                raise BadAuthorizeRequest(f"a sign-in request is at most {MAX_FORM} bytes")
            try:
                body = await request.body.read_all(MAX_FORM)
            except BodyTooLarge:
                raise BadAuthorizeRequest(f"a sign-in request is at most {MAX_FORM} bytes") from None
            form = parse_form(body)
            req = parse_authorize(form, own, SCOPES)
        except (BadAuthorizeRequest, InvalidScope) as e:
            # Never redirected (RFC 6749 §4.1.2.1): the redirect URI itself may be the bad part.
            self.counts["refused"] += 1
            return signin_page(None, error=str(e), status=400)
        name, password = form.get("username", "")[:64], form.get("password", "")
        try:
            # Both budgets before the password is hashed: the address's (the token endpoint's)
            # and the user name's (see auth.login).
            now = self.clock.monotonic()
            self.limiter.check_token_request(request.client[0] if request.client else None, now)
            self.login_throttle.check(name, now)
            users = self.users
            user = await anyio.to_thread.run_sync(lambda: users.verify(name, password), limiter=self.password_checks)
            scopes = user.scopes if req.scopes is None else tuple(s for s in req.scopes if s in user.scopes)
            if not scopes:
                raise LoginFailed(f"{name} may not have the scopes asked for")
        except (LoginFailed, TooManyRequests) as e:
            self.counts["sign_ins_refused"] += 1
            status = 429 if isinstance(e, TooManyRequests) else 401
            return signin_page(req, error=str(e).capitalize() + ".", user=name, status=status)
        code = self.issuer.codes.issue(user=user.name, scopes=scopes, request=req, now=self.clock.time())
        self.counts["sign_ins"] += 1
        sep = "&" if "?" in req.redirect_uri else "?"
        location = req.redirect_uri + sep + urlencode({"code": code, "state": req.state})
        return Response(303, [("location", location), ("cache-control", "no-store"), ("content-length", "0"),
                              ("referrer-policy", "no-referrer")])

    def _discovery(self, request: Request, origin: str | None) -> Response:
        if self.issuer is None:
            raise NotFound("this origin has no built-in issuer")
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed("GET only")
        doc = self.issuer.jwks() if request.path.endswith("jwks.json") else self.issuer.metadata(SCOPES)
        body = json.dumps(doc, separators=(",", ":")).encode()
        return Response(200, [("content-type", "application/json"), ("content-length", str(len(body))),
                              ("cache-control", "public, max-age=300"), *self._cors(origin)], body)

    # --- tus ---------------------------------------------------------------------------------------

    async def _tus(self, request: Request, origin: str | None) -> Response:
        method = request.method
        upload_id = request.path[len("/uploads/"):] if request.path.startswith("/uploads/") else None
        if upload_id is not None and (not upload_id or "/" in upload_id):
            raise NotFound("no such upload")
        if method == "OPTIONS":
            return self._options(request, origin)
        tus.check_single_valued(request.headers)
        method = tus.effective_method(method, request.headers)
        tus.check_version(method, request.headers)
        token = self.authorize(request, ROUTE_SCOPES["uploads"])
        owner = token.subject
        if method in ("POST", "PATCH", "DELETE"):
            self.limiter.check_write(owner, self.clock.monotonic())  # before any byte of the body is read
        cors = self._cors(origin)
        if upload_id is None:
            if method != "POST":
                raise MethodNotAllowed(f"{method[:16]} /uploads: POST creates an upload")
            st = await self.uploads.create(owner, request.headers, request.body)
            location = f"{request.scheme}://{request.host}/uploads/{st.id}" if request.host else f"/uploads/{st.id}"
            return Response(201, [("location", location), *tus.offset_headers(st), ("content-length", "0"), *cors])
        if method == "HEAD":
            st = await self.uploads.head(owner, upload_id)
            return Response(200, [*tus.head_headers(st), *cors])
        if method == "PATCH":
            st = await self.uploads.patch(owner, upload_id, request.headers, request.body)
            return Response(204, [*tus.offset_headers(st), *cors])
        if method == "DELETE":
            await self.uploads.delete(owner, upload_id)
            return Response(204, [*tus.common_headers(), *cors])
        raise MethodNotAllowed(f"{method[:16]} is not a tus method here")

    def _options(self, request: Request, origin: str | None) -> Response:
        """tus discovery; with ``Access-Control-Request-Method`` also the CORS preflight."""
        headers = tus.options_headers(self.uploads.max_upload_bytes)
        if request.headers.get("access-control-request-method") is not None:
            if not self._origin_ok(origin):
                raise OriginNotAllowed("this origin may not upload here")
            headers += self._cors(origin) + [
                ("access-control-allow-methods", _TUS_METHODS), ("access-control-allow-headers", _ALLOW_HEADERS),
                ("access-control-max-age", str(self.cors_max_age_s))]
        else:
            headers += self._cors(origin)
        return Response(204, headers)
