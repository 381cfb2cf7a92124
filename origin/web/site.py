"""The web page's HTTP side: a fixed set of files, served with the headers a browser needs.

Routes (GET and HEAD only; anything else is 405; nothing here reads the request's body or maps a
request path onto the filesystem: every answer is one of the files loaded at start-up):

==========================  ================================================================
``/``, ``/title/{id}``,     ``static/index.html`` (one page; ``app.js`` shows the search, a
``/upload``, ``/signed-in``  title, the creator's upload, or finishes a sign-in, by path)
``/static/app.js``,         the page's own scripts and style (``grant.js``: the playback
``/static/grant.js``,       grant, renewed before it expires)
``/static/app.css``
``/static/lib/shaka-player.compiled.js``, ``/static/lib/tus.min.js``
                            the player and the tus client, from ``origin/web/node_modules``
                            (``make setup`` installs them as ``origin/web``'s lock pins them);
                            absent: 404, and the page says to run ``make setup``
==========================  ================================================================

Headers: the HTML ``Cache-Control: no-cache`` (always revalidated: a new deploy shows at once),
the page's script and style five minutes, the libraries a day (their names carry no version, so
not ``immutable``); a strong ``ETag`` and ``304`` for ``If-None-Match``; ``nosniff``;
``Referrer-Policy: no-referrer`` (a sign-in's code and a signed URL stay out of Referer); and a
strict ``Content-Security-Policy``: scripts and styles from this site only (no inline script, no
``eval``), media from this site, ``blob:`` (Media Source Extensions) and the CDN, ``fetch`` to
this site, the CDN and the licence server only, forms posting here only, no framing.

The sign-in form (``/oauth/authorize``) is rendered by :func:`signin_page`; the app handles the
request (:meth:`headwater.origin.app.OriginApp._authorize`).
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from headwater.http import Request, Response

from ..auth.login import AuthorizeRequest
from ..errors import MethodNotAllowed, NotFound

__all__ = ["WebSite", "signin_page", "STATIC_DIR", "LIBRARIES", "page_csp"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
NODE_MODULES = Path(__file__).resolve().parent / "node_modules"
LIBRARIES = {
    "shaka-player.compiled.js": NODE_MODULES / "shaka-player/dist/shaka-player.compiled.js",
    "tus.min.js": NODE_MODULES / "tus-js-client/dist/tus.min.js",
}
_PAGE_PATHS = re.compile(r"/|/upload|/signed-in|/title/[1-9][0-9]{0,17}")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
_COMMON = [("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer"),
           ("cross-origin-opener-policy", "same-origin")]
_SIGNIN_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
               "frame-ancestors 'none'; base-uri 'none'")


def _origin_of(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def page_csp(*, cdn_url: str | None, licence_url: str | None) -> str:
    """The page's Content-Security-Policy for a CDN and a licence server at these URLs."""
    cdn = _origin_of(cdn_url)
    licence = _origin_of(licence_url)
    media = " ".join(x for x in ("'self'", "blob:", cdn) if x)
    connect = " ".join(dict.fromkeys(x for x in ("'self'", cdn, licence) if x))
    img = " ".join(x for x in ("'self'", "data:", cdn) if x)
    return (f"default-src 'none'; script-src 'self'; style-src 'self'; img-src {img}; media-src {media}; "
            f"connect-src {connect}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: str
    cache_control: str
    etag: str


def _file(body: bytes, content_type: str, cache_control: str) -> _File:
    return _File(body, content_type, cache_control, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class WebSite:
    """The page's files, loaded once (see the module docstring)."""

    def __init__(self, *, csp: str, static_dir: Path = STATIC_DIR, libraries: dict[str, Path] | None = None) -> None:
        self.csp = csp
        self.files: dict[str, _File] = {}
        self.files["/"] = _file((static_dir / "index.html").read_bytes(), _TYPES[".html"], "no-cache")
        for name in ("app.js", "grant.js", "app.css"):
            self.files[f"/static/{name}"] = _file((static_dir / name).read_bytes(), _TYPES[Path(name).suffix],
                                                  "public, max-age=300")
        self.missing: list[str] = []
        for name, path in (LIBRARIES if libraries is None else libraries).items():
            try:
                self.files[f"/static/lib/{name}"] = _file(path.read_bytes(), _TYPES[".js"], "public, max-age=86400")
            except OSError:
                self.missing.append(str(path))
        self.counts = {"web_pages": 0, "web_not_modified": 0}

    def handles(self, path: str) -> bool:
        """Whether ``path`` is one of the page's routes."""
        return path.startswith("/static/") or _PAGE_PATHS.fullmatch(path) is not None

    async def __call__(self, request: Request) -> Response:
        path = request.path
        key = "/" if _PAGE_PATHS.fullmatch(path) else path
        f = self.files.get(key)
        if f is None:
            if path.startswith("/static/lib/"):
                raise NotFound(f"{path[:100]} is not installed here: run `make setup` (npm ci in origin/web)")
            raise NotFound(f"no route {path[:100]!r}")
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{request.method[:16]} {path[:100]}: GET only", allow="GET, HEAD")
        headers = [("content-type", f.content_type), ("cache-control", f.cache_control), ("etag", f.etag), *_COMMON]
        if f.content_type.startswith("text/html"):
            headers.append(("content-security-policy", self.csp))
        self.counts["web_pages"] += 1
        inm = request.headers.get("if-none-match")
        if inm is not None and f.etag in (t.strip() for t in inm[:1024].split(",")):
            self.counts["web_not_modified"] += 1
            return Response(304, headers)
        return Response(200, [*headers, ("content-length", str(len(f.body)))], f.body)


def _hidden(req: AuthorizeRequest) -> Iterable[str]:
    fields = {"response_type": "code", "client_id": req.client_id, "redirect_uri": req.redirect_uri,
              "state": req.state, "code_challenge": req.code_challenge, "code_challenge_method": "S256"}
    if req.scopes is not None:
        fields["scope"] = " ".join(req.scopes)
    for k, v in fields.items():
        yield f'<input type="hidden" name="{k}" value="{html.escape(v, quote=True)}">'


def signin_page(req: AuthorizeRequest | None, *, error: str | None = None, user: str = "",
                status: int = 200) -> Response:
    """The sign-in form for ``req`` (or, with ``req`` None, only ``error``: a request that
    cannot be redirected back). Every value is escaped; the page runs no script."""
    err = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    if req is None:
        form = '<p><a href="/">Back to Headwater</a></p>'
    else:
        form = (f'<form method="post" action="/oauth/authorize" class="signin">{"".join(_hidden(req))}'
                f'<label>User name <input name="username" autocomplete="username" required maxlength="64" '
                f'value="{html.escape(user, quote=True)}" autofocus></label>'
                f'<label>Password <input name="password" type="password" autocomplete="current-password" '
                f'required maxlength="256"></label>'
                f'<button type="submit" class="primary">Sign in</button></form>')
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>Sign in · Headwater</title><link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="/static/app.css"></head>'
            f'<body><header class="top"><a class="brand" href="/">Headwater</a></header>'
            f'<main><h1>Sign in</h1>{err}{form}</main></body></html>').encode()
    return Response(status, [("content-type", _TYPES[".html"]), ("content-length", str(len(body))),
                             ("cache-control", "no-store"), ("content-security-policy", _SIGNIN_CSP),
                             *_COMMON], body)
