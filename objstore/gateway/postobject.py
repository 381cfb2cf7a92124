"""POST Object: a browser upload, an HTML form (multipart/form-data) POSTed to the bucket.

The request carries no Authorization header: the form's fields before the file (``key``,
``policy`` and its signature, Content-Type, ``x-amz-meta-*``, ``success_action_*``...) are
read first, at most 20 KB of them as on S3, and the signed policy is checked
(``s3.postpolicy``) before a byte of the file is stored. The file then streams into the object
store as a PutObject body does, its size held to the policy's content-length-range as it
arrives; fields after the file are ignored, as S3 ignores them (but count toward the 20 KB,
which are of the whole form but the file's bytes, as S3 counts them), but for a second file,
which S3 refuses (400 InvalidArgument, and nothing is stored). The answer is S3's: 204 by
default, 200 or 201 (a PostResponse document) as ``success_action_status`` asks, or a 303 to
``success_action_redirect`` with the bucket, key and ETag in its query.
"""

from __future__ import annotations

import hashlib
from typing import AsyncIterator
from urllib.parse import quote, urlencode, urlsplit

from headwater.http.types import Headers, Request, Response

from ..config import user_by_access_key
from ..records import ObjectRecord
from ..s3 import errors as s3e
from ..s3 import formdata, names, objectlock, postpolicy, tagging, xmlio
from .buckets import owned_bucket
from .context import Call, Store
from .objects import commit_object, store_body

__all__ = ["is_post_form", "post_object"]

#: S3: "The form data and boundaries (excluding the contents of the file) cannot exceed 20 KB."
MAX_FIELDS_BYTES = 20 * 1024
READ_SIZE = 256 * 1024
#: The characters of a redirect URL sent as they are: printable US-ASCII but the space.
_URL_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def is_post_form(request: Request, key: str | None) -> bool:
    """A POST Object request: POST to a bucket (no key) with a multipart/form-data body and no
    signature of its own (the form carries it)."""
    media_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    # (without a boundary it is still a form, a malformed one: MalformedPOSTRequest, as S3)
    return (request.method == "POST" and key is None and "authorization" not in request.headers
            and media_type == "multipart/form-data")


class _Form:
    """The request body as form events, pulled from the connection as they are needed."""

    def __init__(self, request: Request) -> None:
        boundary = formdata.boundary_of(request.headers.get("content-type"))
        if boundary is None:
            raise s3e.MalformedPOSTRequest()
        self.request = request
        self.reader = formdata.FormReader(boundary)
        self.pending: list[formdata.FormEvent] = []
        self.ended = False

    async def next(self) -> formdata.FormEvent | None:
        while not self.pending:
            if self.ended:
                return None
            raw = await self.request.body.receive(READ_SIZE)
            if not raw:
                self.reader.finish()
                self.ended = True
            else:
                self.pending = self.reader.feed(raw)
                self.pending.reverse()
        return self.pending.pop()

    async def fields(self) -> tuple[dict[str, str], formdata.PartStarted]:
        """The fields before the file (names lower-case, values UTF-8 text), and the file's part."""
        fields: dict[str, str] = {}
        size = 0
        name: str | None = None
        value = bytearray()
        while True:
            # S3's 20 KB count the boundaries and part headers too, not only names and values:
            # else a stream of empty-named parts (or a long preamble) is read without end.
            if not self.pending and self.reader.consumed > MAX_FIELDS_BYTES:
                raise s3e.MaxPostPreDataLengthExceededError()
            event = await self.next()
            if event is None:
                raise s3e.InvalidArgument("POST requires exactly one file upload per request.",
                                          ArgumentName="file", ArgumentValue="0")
            if isinstance(event, formdata.PartStarted):
                if event.offset > MAX_FIELDS_BYTES:
                    raise s3e.MaxPostPreDataLengthExceededError()
                if event.name.lower() == "file":
                    return fields, event
                name = event.name.lower()
                size += len(event.name)
            elif isinstance(event, formdata.PartData):
                size += len(event.data)
                value += event.data
            else:  # PartEnded
                assert name is not None
                try:
                    fields[name] = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise s3e.MalformedPOSTRequest() from None
                name, value = None, bytearray()
            if size > MAX_FIELDS_BYTES:
                raise s3e.MaxPostPreDataLengthExceededError()

    async def file(self) -> AsyncIterator[bytes]:
        """The file part's bytes, up to its end."""
        while True:
            event = await self.next()
            if isinstance(event, formdata.PartData):
                yield event.data
            elif isinstance(event, formdata.PartEnded):
                return
            else:
                raise s3e.MalformedPOSTRequest()

    async def drain(self, file_size: int) -> None:
        """Read (and ignore) what follows the file, to the closing boundary. S3's 20 KB are of
        all the form but the file's bytes, so what follows the file counts too: else a client
        could send without end after the file (an epilogue, ignored parts) and hold the upload.

        A second ``file`` part is not one of the ignored fields: S3 refuses the form, 400
        InvalidArgument "POST requires exactly one file upload per request." (what uploaders
        sending two file parts report back from S3), and the caller stores nothing."""
        while True:
            if self.reader.consumed - file_size > MAX_FIELDS_BYTES:
                raise s3e.MaxPostPreDataLengthExceededError()
            event = await self.next()
            if event is None:
                return
            if isinstance(event, formdata.PartStarted) and event.name.lower() == "file":
                raise s3e.InvalidArgument("POST requires exactly one file upload per request.",
                                          ArgumentName="file", ArgumentValue="2")


def _wire(value: str) -> str:
    """A form value (UTF-8 text) as the gateway holds header values: the UTF-8 bytes read as
    latin-1, so stored metadata and headers go back out as a PutObject's would."""
    return value.encode("utf-8").decode("latin-1")


def _location(request: Request, bucket: str, key: str) -> str:
    host = request.host or request.headers.get("host", "")
    return f"{request.scheme}://{host}/{bucket}/{quote(key, safe='/')}"


def _answer(fields: dict[str, str], *, location: str, bucket: str, key: str, etag: str) -> Response:
    headers = [("etag", etag), ("location", location)]
    redirect = fields.get("success_action_redirect") or fields.get("redirect")
    if redirect:
        parts = urlsplit(redirect)
        if parts.scheme in ("http", "https") and parts.netloc:
            query = urlencode({"bucket": bucket, "key": key, "etag": etag})
            # A form field can hold CR, LF, spaces or non-latin-1 text, none of which a Location
            # header can carry (the answer would be unsendable after the object was stored):
            # they go out percent-encoded, as a browser would send them; '%' itself is kept.
            target = quote(redirect, safe=_URL_SAFE) + ("&" if parts.query else "?") + query
            return Response(status=303, headers=[("etag", etag), ("location", target), ("content-length", "0")])
        # S3: "If the URL is invalid, Amazon S3 ignores the field" and answers as without it
    status = fields.get("success_action_status", "204")
    if status == "201":
        body = xmlio.post_response(location=location, bucket=bucket, key=key, etag=etag)
        return Response(status=201, headers=headers + [("content-type", "application/xml")], body=body)
    if status == "200":
        return Response(status=200, headers=headers + [("content-length", "0")])
    return Response(status=204, headers=headers)


async def post_object(store: Store, request: Request, *, bucket: str, request_id: str) -> Response:
    """POST Object: authorize the form by its signed policy, then store its file."""
    cfg = store.cluster.objstore
    form = _Form(request)
    fields, file_part = await form.fields()
    auth = postpolicy.authorize(fields, bucket=bucket, filename=file_part.filename,
                                lookup_user=lambda k: user_by_access_key(store.cluster, k),
                                region=cfg.region, now=store.clock())
    names.validate_key(auth.key)
    call = Call(request=request, request_id=request_id, user=auth.user, bucket=bucket, key=auth.key,
                query={}, auth=None)
    sent_at = store.buckets.now()
    bucket_rec = await owned_bucket(store, call)
    # The form's fields stand for the headers a PutObject would carry.
    as_headers = Headers((name, _wire(value)) for name, value in fields.items())
    objectlock.check_object_lock("PostObject", as_headers)
    std = names.extract_standard_headers(as_headers)
    # S3 takes the Content-Type field, not the file part's own header (which browsers fill in
    # from the file's extension): without the field, the object is binary/octet-stream.
    content_type = std.pop("content-type", None) or "binary/octet-stream"
    meta = names.extract_metadata(as_headers)
    # Form fields, unlike headers, can hold CR, LF or NUL, and their names any text: stored, they
    # would make every GET and HEAD of the object unsendable (a 500), so they are refused first.
    for name, value in (("content-type", content_type), *std.items(),
                        *((names.META_PREFIX + k, v) for k, v in meta.items())):
        names.refuse_bad_header_name(name)
        names.refuse_control_characters(name, value)
    # The form's tags are a <Tagging> document (not the header's URL-encoded form), as on S3.
    tags = (tagging.parse_document(fields["tagging"].encode("utf-8"), max_tags=tagging.MAX_OBJECT_TAGS)
            if fields.get("tagging", "").strip() else {})
    limit = min(cfg.max_put_bytes, auth.max_length if auth.max_length is not None else cfg.max_put_bytes)
    md5 = hashlib.md5()
    size = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal size
        async for piece in form.file():
            size += len(piece)
            if size > limit:
                postpolicy.check_length(auth, size, final=False)
                raise s3e.EntityTooLarge(ProposedSize=size, MaxSizeAllowed=cfg.max_put_bytes)
            yield piece

    inline, layout = await store_body(store, cfg.scheme_for(bucket), counted(), inline_max=cfg.inline_max_bytes,
                                      digests=(md5.update,))
    try:
        postpolicy.check_length(auth, size, final=True)
        await form.drain(size)
    except BaseException:
        if layout is not None:
            store.retire([layout], now=True)
        raise
    rec = ObjectRecord(key=auth.key, size=size, etag=f'"{md5.hexdigest()}"', last_modified=store.clock(),
                       owner=auth.user.name, content_type=content_type, headers=std, meta=meta,
                       inline=inline, layouts=(layout,) if layout else (), tags=tags)
    await commit_object(store, bucket, rec, bucket_rec=bucket_rec, bucket_sent_at=sent_at)
    return _answer(fields, location=_location(request, bucket, auth.key), bucket=bucket, key=auth.key,
                   etag=rec.etag)
