"""The CDN's origin: ``GET``/``HEAD /titles/T/vN/<file>`` streamed from the videos bucket.

An object is served only while title T is published and N is its published version
(:class:`~.published.PublishedVersions`): else 404 (unknown title, not yet published, another
version) or 410 (withdrawn), as JSON. Every answer about a title carries ``Surrogate-Key:
title-T``, so one purge by that tag removes everything the CDN holds of it — the 404/410 answers
too, which carry a short ``Cache-Control`` (``error_cache_control``) so that a storm of requests
for a title that is not there is absorbed by the edge, and are purged when it is published.

What the CDN needs of each object: ``Cache-Control`` by kind (manifests, and everything else
immutable under its version prefix: :mod:`.config`), ``ETag`` and ``Last-Modified`` as the store
has them, ``Content-Type`` by extension, ``Accept-Ranges: bytes``. A single byte range and the
conditionals (``If-None-Match``, ``If-Modified-Since``, ``If-Match``, ``If-Unmodified-Since``,
``If-Range``) are passed to the store, which applies them (206 with ``Content-Range``, 416 with
``Content-Range: bytes */size``, 304, 412); a ``Range`` with several ranges or that does not parse
is dropped (the whole object, 200), as S3 does. The body streams from the store to the client
with the HTTP core's backpressure and is never held whole.

``Access-Control-Allow-Origin: *``: the objects are public behind the CDN's signatures (which
travel in the URL or in cookies the edge checks, never to here), and a browser player's XHRs
need it.
"""

from __future__ import annotations

import json

from headwater.http import Request, Response
from headwater.http.ranges import parse_range_header

from ..errors import MethodNotAllowed, NotFound, NotPublished, OriginError, Withdrawn, wire_of
from ..upload.s3 import MultipartStore
from .config import DeliveryConfig
from .objectpath import MANIFEST, ObjectPath, content_type, object_kind, parse_object_path
from .published import Availability, PublishedVersions

__all__ = ["ObjectServer", "surrogate_key"]

# Request fields passed to the store: S3 applies each as RFC 9110 says.
_CONDITIONALS = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range")
_MAX_FIELD = 1024  # a longer conditional is not one a client of ours sends: dropped
_PASSED = ("etag", "last-modified", "content-length", "content-range")


def surrogate_key(title_id: int) -> str:
    """The CDN tag every response about title ``title_id`` carries (purged on any change)."""
    return f"title-{title_id}"


class ObjectServer:
    """Serves published objects (see the module docstring)."""

    def __init__(self, *, store: MultipartStore, versions: PublishedVersions, config: DeliveryConfig) -> None:
        self.store = store
        self.versions = versions
        self.config = config
        self.counts = {"objects_served": 0, "objects_refused": 0, "not_modified": 0, "partial": 0}

    async def __call__(self, request: Request) -> Response:
        """Answer one request for ``/titles/...``; errors that are about a title are answered
        here (with its surrogate key), the rest (400, 405, 503) raised to the app."""
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{request.method[:16]} /titles/...: GET and HEAD only")
        obj = parse_object_path(request.path, max_chars=self.config.max_path_chars)
        try:
            return await self._serve(request, obj)
        except (NotPublished, Withdrawn) as e:
            self.counts["objects_refused"] += 1
            return self._refusal(e, obj.title_id)

    async def _serve(self, request: Request, obj: ObjectPath) -> Response:
        pub = await self.versions.get(obj.title_id)
        if pub.availability is Availability.WITHDRAWN:
            raise Withdrawn(f"title {obj.title_id} was withdrawn")
        if pub.availability is not Availability.PUBLISHED or pub.version != obj.version:
            raise NotPublished("no such object")
        forward = []
        rng = request.headers.get("range")
        if rng is not None and len(rng) <= _MAX_FIELD:
            specs = parse_range_header(rng)
            if specs is not None and len(specs) == 1:
                forward.append(("range", rng))
        for name in _CONDITIONALS:
            value = request.headers.get(name)
            if value is not None and len(value) <= _MAX_FIELD:
                forward.append((name, value))
        try:
            stored = await self.store.get_object(obj.key, head=request.method == "HEAD", forward=forward)
        except NotFound:  # published, yet not in the store: not one of the version's files
            raise NotPublished("no such object") from None
        kind = object_kind(obj.name)
        headers = [("cache-control", self.config.manifest_cache_control if kind == MANIFEST
                    else self.config.segment_cache_control),
                   ("surrogate-key", surrogate_key(obj.title_id)), ("accept-ranges", "bytes"),
                   ("access-control-allow-origin", "*"),
                   ("access-control-expose-headers", "Content-Length, Content-Range, ETag, Last-Modified")]
        headers += [(k, stored.headers[k]) for k in _PASSED if k in stored.headers]
        status = stored.status
        if status in (200, 206):
            headers.append(("content-type", content_type(obj.name)))
            self.counts["objects_served"] += 1
            if status == 206:
                self.counts["partial"] += 1
            return Response(status, headers, stored.body)
        await stored.aclose()
        if status == 304:
            self.counts["not_modified"] += 1
            return Response(304, [h for h in headers if h[0] != "content-length"], b"")
        # 412 or 416: a JSON body saying so; 416 keeps the store's "bytes */size".
        code = "range_not_satisfiable" if status == 416 else "precondition_failed"
        body = json.dumps({"error": code, "message": f"{code.replace('_', ' ')} for {obj.name[:200]}"}).encode()
        headers = [h for h in headers if h[0] not in ("content-length", "cache-control")]
        return Response(status, [*headers, ("content-type", "application/json"), ("cache-control", "no-store"),
                                 ("content-length", str(len(body)))], body)

    def _refusal(self, exc: OriginError, title_id: int) -> Response:
        status, code = wire_of(exc)
        body = json.dumps({"error": code, "message": str(exc)}, separators=(",", ":")).encode()
        return Response(status, [("content-type", "application/json"), ("content-length", str(len(body))),
                                 ("cache-control", self.config.error_cache_control),
                                 ("surrogate-key", surrogate_key(title_id)),
                                 ("access-control-allow-origin", "*")], body)
