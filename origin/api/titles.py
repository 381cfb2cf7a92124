"""The title routes: a creator makes a title from a finished upload, follows its state, edits
its metadata, withdraws it, and lists their own; anyone reads a published title.

==============================================  =========================  ==========================
``POST /api/titles``                            ``titles:write``           create from an upload (201;
                                                                           200 with the same title
                                                                           when re-posted)
``GET /api/titles/{id}``                        none (published);          the title
                                                owner + ``titles:read`` or
                                                ``titles:write`` otherwise
``PATCH /api/titles/{id}``                      owner + ``titles:write``   metadata change
``DELETE /api/titles/{id}``,                    owner + ``titles:write``   state ``withdrawn``
``POST /api/titles/{id}/withdraw``
``POST /api/titles/{id}/retry``                 owner + ``titles:write``   transcode a failed or
                                                                           withdrawn title again (202)
``GET /api/titles?mine=1&after=&limit=&state=``  ``titles:read``/``:write``  the caller's titles
==============================================  =========================  ==========================

A title another owner has not published is *not found* (404), never forbidden: its existence is
not told. Creating enqueues the transcode job ``kind="transcode"``, idempotency key
``transcode:<title id>:<upload id>``, payload ``{"bucket": <uploads bucket>, "key":
"uploads/<upload id>"}``; a re-post of the same upload by the same owner answers the title made
the first time (its metadata unchanged) and enqueues nothing new.

A retry (``POST /api/titles/{id}/retry``, no body) of a ``failed`` or ``withdrawn`` title moves it
to ``transcoding`` and enqueues a new transcode job from the same upload under a new key,
``transcode:<title id>:<upload id>:retry:<the title's updated time>`` (one job per failure or
withdrawal, however often the POST is repeated: a repeat finds the title transcoding, 409). The
job publishes a new version ``titles/T/v<job>-<attempt>/`` through the transcoder's normal publish
(its CDN purge by surrogate key included); the old version is no longer served from then on. 409
(``illegal_transition``) for a title in any other state, or whose transcode is still queued or
running; 404 for an unknown title or another owner's unpublished one.
"""

from __future__ import annotations

from dataclasses import replace

from headwater.http import Request, Response

from ..auth.tokens import AccessToken, AccessTokenVerifier
from ..catalogue import SqlCatalogue, Title, TitleState
from ..delivery.invalidation import request_cdn_purge
from ..errors import BadSearch, Forbidden, Gone, NotFound, TitleConflict, TitleNotFound, UploadNotFinished
from ..upload.service import UploadService
from .runner import CatalogueRunner
from .title_doc import draft_of, parse_create, parse_patch, title_json
from .wire import Route, caller, json_response, optional_caller, query_params, read_json_object

__all__ = ["TitlesApi", "TRANSCODE_KIND"]

TRANSCODE_KIND = "transcode"
_READ = ("titles:read", "titles:write")
_LIST_PARAMS = frozenset({"mine", "after", "limit", "state"})


def _title_id(raw: str) -> int:
    # The pattern admits digits only; a 40-digit id is not a title either.
    if len(raw) > 18:
        raise TitleNotFound(f"no title {raw[:20]}")
    return int(raw)


class TitlesApi:
    """The handlers of ``/api/titles`` (see the module docstring)."""

    def __init__(self, *, catalogue: CatalogueRunner, uploads: UploadService, verifier: AccessTokenVerifier,
                 uploads_bucket: str, media_base_url: str = "") -> None:
        self.catalogue = catalogue
        self.uploads = uploads
        self.verifier = verifier
        self.uploads_bucket = uploads_bucket
        self.media_base_url = media_base_url.rstrip("/")  # the CDN's: a title's poster and thumbnails

    def _json(self, title: Title, *, owner_view: bool) -> dict:
        return title_json(title, owner_view=owner_view, media_base_url=self.media_base_url)

    def routes(self) -> list[Route]:
        """This module's routes, for the app's table."""
        return [
            Route.of("GET HEAD POST", r"/api/titles", self.collection),
            Route.of("GET HEAD PATCH DELETE", r"/api/titles/([0-9]+)", self.one),
            Route.of("POST", r"/api/titles/([0-9]+)/withdraw", self.withdraw),
            Route.of("POST", r"/api/titles/([0-9]+)/retry", self.retry),
        ]

    # --- /api/titles ---------------------------------------------------------------------------

    async def collection(self, request: Request, args: tuple[str, ...]) -> Response:
        if request.method == "POST":
            return await self.create(request)
        return await self.mine(request)

    async def create(self, request: Request) -> Response:
        """Make a title from the caller's finished upload and queue its transcode."""
        token = caller(self.verifier, request, "titles:write")
        draft = parse_create(await read_json_object(request))
        assert draft.upload is not None
        owner = token.subject
        draft = replace(draft, owner=owner)
        try:
            # held while the title is made: the janitor's retirement cannot decide meanwhile
            # that no title names the upload and delete its object
            async with self.uploads.claimed(owner, draft.upload) as upload:
                if upload.completed is None:
                    raise UploadNotFinished(f"upload {upload.id} has {upload.offset} of {upload.length} bytes: "
                                            "finish it first (tus HEAD, then PATCH)")
                payload = {"bucket": self.uploads_bucket, "key": f"uploads/{upload.id}"}
                upload_id = upload.id

                def create(cat: SqlCatalogue) -> tuple[Title, bool]:
                    title, created = cat.create_title_once(draft)
                    # Always (re-)enqueued: a crash between the two writes is healed by the client's
                    # retry, and the key makes a second enqueue return the first job.
                    cat.enqueue(TRANSCODE_KIND, f"transcode:{title.id}:{upload_id}", title_id=title.id,
                                payload=payload)
                    return title, created

                title, created = await self.catalogue.call(create)
        except Forbidden:
            raise NotFound("no such upload") from None  # another client's: not told
        except Gone:
            raise UploadNotFinished("the upload expired before it was finished: upload again") from None
        return json_response(201 if created else 200, self._json(title, owner_view=True),
                             [("location", f"/api/titles/{title.id}")])

    async def mine(self, request: Request) -> Response:
        """The caller's titles in id order, ``limit`` at a time after ``after`` (keyset paging)."""
        token = caller(self.verifier, request, *_READ)
        params = query_params(request, _LIST_PARAMS)
        if params.get("mine") not in ("1", "true"):
            raise BadSearch("GET /api/titles lists your own titles: add mine=1 (viewers use /api/search)")
        after = _bounded_int(params, "after", 0, 0, 2**62)
        limit = _bounded_int(params, "limit", 20, 1, self.catalogue.catalogue.config.search.max_page_size)
        state = params.get("state") or None
        if state is not None and state not in {s.value for s in TitleState}:
            raise BadSearch(f"state must be one of {', '.join(s.value for s in TitleState)}")
        titles = await self.catalogue.call(lambda cat: cat.list_titles(
            state=TitleState(state) if state else None, owner=token.subject, after_id=after, limit=limit))
        nxt = None
        if len(titles) == limit:
            nxt = f"/api/titles?mine=1&after={titles[-1].id}&limit={limit}" + (f"&state={state}" if state else "")
        return json_response(200, {"titles": [self._json(t, owner_view=True) for t in titles], "next": nxt})

    # --- /api/titles/{id} ----------------------------------------------------------------------

    async def one(self, request: Request, args: tuple[str, ...]) -> Response:
        title_id = _title_id(args[0])
        if request.method in ("GET", "HEAD"):
            return await self.read(request, title_id)
        if request.method == "PATCH":
            return await self.patch(request, title_id)
        return await self._withdraw(request, title_id)

    async def read(self, request: Request, title_id: int) -> Response:
        """A published title for anyone; any other only for its owner with a titles scope."""
        token = optional_caller(self.verifier, request)
        title = await self.catalogue.call(lambda cat: cat.get_title(title_id))
        owner_view = token is not None and token.subject == title.owner and bool(token.scopes & set(_READ))
        if title.state is not TitleState.PUBLISHED and not owner_view:
            raise TitleNotFound(f"no title {title_id}")
        return json_response(200, self._json(title, owner_view=owner_view))

    async def _owned(self, request: Request, title_id: int) -> tuple[AccessToken, Title]:
        token = caller(self.verifier, request, "titles:write")
        title = await self.catalogue.call(lambda cat: cat.get_title(title_id))
        if title.owner != token.subject:
            if title.state is TitleState.PUBLISHED:
                raise Forbidden("this title belongs to another owner")
            raise TitleNotFound(f"no title {title_id}")
        return token, title

    async def patch(self, request: Request, title_id: int) -> Response:
        """Change the fields the body gives; the others stay."""
        caller(self.verifier, request, "titles:write")  # before the body is read
        changes = parse_patch(await read_json_object(request))
        _, title = await self._owned(request, title_id)
        if changes:
            draft = draft_of(title, changes)
            title = await self.catalogue.call(lambda cat: cat.update_metadata(title_id, draft))
        return json_response(200, self._json(title, owner_view=True))

    async def withdraw(self, request: Request, args: tuple[str, ...]) -> Response:
        return await self._withdraw(request, _title_id(args[0]))

    async def _withdraw(self, request: Request, title_id: int) -> Response:
        """State ``withdrawn`` (again: the same answer)."""
        _, title = await self._owned(request, title_id)
        if title.state is not TitleState.WITHDRAWN:
            title = await self.catalogue.call(lambda cat: cat.set_state(title_id, TitleState.WITHDRAWN))
            withdrawn = title
            # The CDN still holds its manifests and segments: purge its surrogate key.
            await self.catalogue.call(lambda cat: request_cdn_purge(cat, withdrawn))
        return json_response(200, self._json(title, owner_view=True))


    async def retry(self, request: Request, args: tuple[str, ...]) -> Response:
        """Queue a failed or withdrawn title's transcode again (see the module docstring)."""
        title_id = _title_id(args[0])
        _, title = await self._owned(request, title_id)
        if title.upload is None:  # an operator's import: there is no source to transcode
            raise TitleConflict(f"title {title_id} was not made from an upload: there is nothing to transcode")
        payload = {"bucket": self.uploads_bucket, "key": f"uploads/{title.upload}"}
        title, _ = await self.catalogue.call(lambda cat: cat.retry_title(title_id, TRANSCODE_KIND, payload=payload))
        return json_response(202, self._json(title, owner_view=True), [("location", f"/api/titles/{title.id}")])


def _bounded_int(params: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(key, "")
    if raw == "":
        return default
    if len(raw) > 19 or not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:
        raise BadSearch(f"{key} must be an integer within {lo}..{hi}")
    return int(raw)
