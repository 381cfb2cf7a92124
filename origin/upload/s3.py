"""One bucket of the object store as the origin uses it: the multipart API (the upload service)
and streamed reads (the CDN's origin, :mod:`headwater.origin.delivery`). S3 requests signed with
:mod:`headwater.sigv4` and sent with the kernel's :class:`~headwater.http.client.HttpClient`.

Path-style URLs (``/bucket/key``). Every failure (a refused connection, a timeout, a 5xx, an
S3 error) is :class:`~headwater.origin.errors.StoreUnavailable`: the caller acknowledges nothing
it was sending. A read (:meth:`MultipartStore.get_object`) hands back the store's answer once its
head is in and streams the body as it arrives, one socket read per chunk, each bounded by the
read timeout: an object is never held whole in memory. Each part is sent as one body of at most ``part_size`` bytes with its SHA-256 in
the signature, so the store checks every byte it acknowledges.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from xml.sax.saxutils import escape
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence
from urllib.parse import quote, urlsplit

from defusedxml import ElementTree

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.http.client import ClientResponse, HttpClient
from headwater.http.errors import BadResponse, ConnectFailed, ResponseTimeout
from headwater.sigv4 import EMPTY_SHA256, sign_request

from ..errors import NotFound, StoreUnavailable
from .tus import Part

__all__ = ["MultipartStore", "StoredObject", "ListedObject", "ListedUpload", "READ_STATUSES"]

_MAX_ANSWER = 64 * 1024
# A list's page: S3 caps one at 1,000 entries of keys up to 1 KiB each (ours are ~70 bytes).
_MAX_LIST_ANSWER = 4 * 1024 * 1024
_LIST_PAGE = 1000
#: The store's answers to a GET/HEAD that :meth:`MultipartStore.get_object` hands back: the object
#: (200), a range of it (206), a conditional's verdicts (304, 412), an unsatisfiable range (416).
READ_STATUSES = (200, 206, 304, 412, 416)
# Response fields of the store worth passing on for an object: the rest (x-amz-*, Server, Date,
# the store's own caching headers) are the store's business.
_OBJECT_FIELDS = frozenset({"content-length", "content-range", "etag", "last-modified", "accept-ranges",
                            "content-type"})


@dataclass(slots=True, kw_only=True)
class StoredObject:
    """The store's answer to a read: ``status`` (one of :data:`READ_STATUSES`), the object's
    fields (lower-case names, from :data:`_OBJECT_FIELDS`) and its body, streamed. Iterate
    ``body`` once, or ``aclose`` it: either way the connection is released."""

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]

    async def aclose(self) -> None:
        """Give up the body (its connection is closed unless the body was read to its end)."""
        await self.body.aclose()  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class ListedObject:
    """An object as ListObjectsV2 names it: its key, when it was written (POSIX seconds, the
    store's clock) and its size."""

    key: str
    modified: float
    size: int


@dataclass(frozen=True, slots=True)
class ListedUpload:
    """A multipart upload in progress as ListMultipartUploads names it."""

    key: str
    upload_id: str
    initiated: float


def _posix(stamp: str | None) -> float:
    """S3's ``2026-12-04T09:30:00.000Z`` as POSIX seconds (StoreUnavailable for anything else:
    an entry whose age cannot be told must not be taken for an old one)."""
    try:
        return datetime.fromisoformat((stamp or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise StoreUnavailable(f"the object store listed a time that is not ISO 8601: {stamp!r:.60}") from None


def _children(el: Any) -> dict[str, str]:
    return {c.tag.rsplit("}", 1)[-1]: c.text or "" for c in el}


def _list_document(answer: bytes, what: str) -> Any:
    try:
        return ElementTree.fromstring(answer)
    except ElementTree.ParseError:
        raise StoreUnavailable(f"{what} answered no document") from None


def _text(xml: bytes, name: str) -> str | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == name:
            return el.text or ""
    return None


class MultipartStore:
    """One bucket of an S3 endpoint, for multipart uploads."""

    def __init__(self, client: HttpClient, *, endpoint: str, bucket: str, access_key: str, secret_key: str,
                 region: str, clock: Clock = SYSTEM_CLOCK, timeout_s: float = 30.0) -> None:
        parts = urlsplit(endpoint)
        self.client = client
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc
        self.bucket = bucket
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.clock = clock
        self.timeout_s = timeout_s

    async def _call(self, method: str, key: str | None, query: str, body: bytes = b"",
                    ok: Sequence[int] = (200,), fields: Sequence[tuple[str, str]] = (),
                    max_answer: int = _MAX_ANSWER) -> tuple[int, dict[str, str], bytes]:
        path = f"/{self.bucket}" + (f"/{quote(key, safe='/')}" if key is not None else "")
        sha = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        extra = (("content-length", str(len(body))),) if method in ("PUT", "POST") else ()
        headers = [("host", self.host), *extra, *fields,
                   *sign_request(method, self.host, path, query, access_key=self.access_key,
                                 secret_key=self.secret_key, region=self.region, now=self.clock.time(),
                                 payload_sha256=sha, extra_headers=tuple(fields))]
        url = f"{self.endpoint}{path}" + (f"?{query}" if query else "")
        try:
            resp = await self.client.request(method, url, headers, body=body, timeout_s=self.timeout_s)
            try:
                answer = await resp.read(max_answer)
            finally:
                await resp.aclose()
        except (ConnectFailed, ResponseTimeout, BadResponse, OSError) as e:
            raise StoreUnavailable(f"the object store did not answer {method} {path}: {e}") from None
        if resp.status not in ok:
            code = _text(answer, "Code") or f"HTTP {resp.status}"
            raise StoreUnavailable(f"the object store refused {method} {path}: {code}")
        return resp.status, {k: v for k, v in resp.headers}, answer

    async def get_object(self, key: str, *, head: bool = False,
                         forward: Sequence[tuple[str, str]] = ()) -> StoredObject:
        """GetObject (HeadObject with ``head``) of ``key``, with the request fields in ``forward``
        (a single ``Range``, the conditionals) passed to the store, which applies them.

        Returns once the head is in; the body streams. A missing object is :class:`NotFound`;
        anything else the store says outside :data:`READ_STATUSES` is :class:`StoreUnavailable`."""
        method = "HEAD" if head else "GET"
        path = f"/{self.bucket}/{quote(key, safe='/')}"
        headers = [("host", self.host), *forward,
                   *sign_request(method, self.host, path, "", access_key=self.access_key,
                                 secret_key=self.secret_key, region=self.region, now=self.clock.time(),
                                 payload_sha256=EMPTY_SHA256)]
        try:
            resp = await self.client.request(method, f"{self.endpoint}{path}", headers, timeout_s=self.timeout_s)
        except (ConnectFailed, ResponseTimeout, BadResponse, OSError) as e:
            raise StoreUnavailable(f"the object store did not answer {method} {path}: {e}") from None
        if resp.status not in READ_STATUSES or resp.status in (304, 412, 416):
            # No object bytes follow: read the (small) error document, and free the connection.
            try:
                answer = await resp.read(_MAX_ANSWER)
            except (ResponseTimeout, BadResponse, OSError):
                answer = b""
            finally:
                await resp.aclose()
            if resp.status == 404:
                raise NotFound(f"no object {key[:200]!r}")
            if resp.status not in READ_STATUSES:
                code = _text(answer, "Code") or f"HTTP {resp.status}"
                raise StoreUnavailable(f"the object store refused {method} {path}: {code}")

            async def nothing() -> AsyncIterator[bytes]:
                return
                yield b""  # pragma: no cover - makes this an async generator
            body: AsyncIterator[bytes] = nothing()
        else:
            body = self._stream(resp, method, path)
        fields = {k: v for k, v in resp.headers if k in _OBJECT_FIELDS}
        return StoredObject(status=resp.status, headers=fields, body=body)

    @staticmethod
    async def _stream(resp: "ClientResponse", method: str, path: str) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    chunk = await resp.receive()
                except (ResponseTimeout, BadResponse, OSError) as e:
                    # The head (and its Content-Length) is already sent: the only honest answer
                    # left is a cut connection, which the HTTP core gives a body that fails.
                    raise StoreUnavailable(f"the object store broke off {method} {path}: {e}") from None
                if not chunk:
                    return
                yield chunk
        finally:
            await resp.aclose()

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (ours already: 409 BucketAlreadyOwnedByYou)."""
        try:
            await self._call("PUT", None, "", ok=(200,))
        except StoreUnavailable as e:
            if "BucketAlreadyOwnedByYou" not in str(e):
                raise

    async def create(self, key: str) -> str:
        """CreateMultipartUpload: the store's upload id."""
        _, _, answer = await self._call("POST", key, "uploads=")
        upload_id = _text(answer, "UploadId")
        if not upload_id:
            raise StoreUnavailable("CreateMultipartUpload answered no UploadId")
        return upload_id

    async def put_part(self, key: str, upload_id: str, number: int, data: bytes) -> Part:
        """UploadPart: durable in the store once this returns."""
        _, headers, _ = await self._call("PUT", key, f"partNumber={number}&uploadId={quote(upload_id, safe='')}",
                                         data)
        etag = headers.get("etag")
        if not etag:
            raise StoreUnavailable("UploadPart answered no ETag")
        return Part(number, etag, len(data))

    async def complete(self, key: str, upload_id: str, parts: Sequence[Part]) -> str:
        """CompleteMultipartUpload: the object's ETag."""
        body = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{p.number}</PartNumber><ETag>{p.etag}</ETag></Part>" for p in parts
        ) + "</CompleteMultipartUpload>"
        _, _, answer = await self._call("POST", key, f"uploadId={quote(upload_id, safe='')}", body.encode())
        # S3 may answer 200 with an error document once the body has started.
        if _text(answer, "Code") is not None:
            raise StoreUnavailable(f"CompleteMultipartUpload failed: {_text(answer, 'Code')}")
        return _text(answer, "ETag") or ""

    async def put_object(self, key: str, data: bytes) -> None:
        """PutObject (its SHA-256 signed, so the store checks every byte): durable in the store
        once this returns."""
        await self._call("PUT", key, "", data)

    async def read_object(self, key: str, *, max_bytes: int) -> bytes:
        """The whole of a small object (at most ``max_bytes``, else :class:`StoreUnavailable`)."""
        obj = await self.get_object(key)
        out = bytearray()
        try:
            async for chunk in obj.body:
                out += chunk
                if len(out) > max_bytes:
                    raise StoreUnavailable(f"object {key[:200]!r} is longer than {max_bytes} bytes")
        finally:
            await obj.aclose()
        return bytes(out)

    async def delete(self, key: str) -> None:
        """DeleteObject (an object already gone is fine: S3 answers 204 either way)."""
        await self._call("DELETE", key, "", ok=(204, 200, 404))

    async def delete_objects(self, keys: Sequence[str]) -> list[str]:
        """DeleteObjects (one request for up to 1,000 keys, quiet): the keys the store could not
        delete (a key already gone counts as deleted)."""
        failed: list[str] = []
        for i in range(0, len(keys), 1000):
            body = ("<Delete><Quiet>true</Quiet>" + "".join(
                f"<Object><Key>{escape(k)}</Key></Object>" for k in keys[i:i + 1000]) + "</Delete>").encode()
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
            _, _, answer = await self._call("POST", None, "delete=", body, fields=(("content-md5", md5),))
            try:
                root = ElementTree.fromstring(answer)
            except ElementTree.ParseError:
                raise StoreUnavailable("DeleteObjects answered no document") from None
            for el in root.iter():
                if el.tag.rsplit("}", 1)[-1] == "Error":
                    failed += [c.text or "" for c in el if c.tag.rsplit("}", 1)[-1] == "Key"]
        return failed

    async def list_objects(self, prefix: str) -> AsyncIterator[ListedObject]:
        """ListObjectsV2 of every key under ``prefix``, page by page (1,000 keys a request)."""
        token: str | None = None
        while True:
            query = f"list-type=2&max-keys={_LIST_PAGE}&prefix={quote(prefix, safe='')}"
            if token is not None:
                query += f"&continuation-token={quote(token, safe='')}"
            _, _, answer = await self._call("GET", None, query, max_answer=_MAX_LIST_ANSWER)
            root = _list_document(answer, "ListObjectsV2")
            top = _children(root)
            for el in root:
                if el.tag.rsplit("}", 1)[-1] == "Contents":
                    entry = _children(el)
                    yield ListedObject(entry.get("Key", ""), _posix(entry.get("LastModified")),
                                       int(entry.get("Size") or 0))
            token = top.get("NextContinuationToken")
            if top.get("IsTruncated") != "true" or not token:
                return

    async def list_uploads(self, prefix: str) -> AsyncIterator[ListedUpload]:
        """ListMultipartUploads of every upload in progress under ``prefix``, page by page."""
        key_marker = id_marker = ""
        while True:
            query = (f"key-marker={quote(key_marker, safe='')}&max-uploads={_LIST_PAGE}"
                     f"&prefix={quote(prefix, safe='')}&upload-id-marker={quote(id_marker, safe='')}&uploads=")
            _, _, answer = await self._call("GET", None, query, max_answer=_MAX_LIST_ANSWER)
            root = _list_document(answer, "ListMultipartUploads")
            top = _children(root)
            for el in root:
                if el.tag.rsplit("}", 1)[-1] == "Upload":
                    entry = _children(el)
                    yield ListedUpload(entry.get("Key", ""), entry.get("UploadId", ""),
                                       _posix(entry.get("Initiated")))
            key_marker, id_marker = top.get("NextKeyMarker", ""), top.get("NextUploadIdMarker", "")
            if top.get("IsTruncated") != "true" or not (key_marker or id_marker):
                return

    async def abort(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload (an upload already gone is fine)."""
        await self._call("DELETE", key, f"uploadId={quote(upload_id, safe='')}", ok=(204, 200, 404))
