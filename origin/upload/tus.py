"""The tus 1.0.0 resumable upload protocol, sans-IO: what each request's headers say, which
answer the spec requires, and the headers of each answer. https://tus.io/protocols/resumable-upload

Core protocol: ``HEAD`` (offset), ``PATCH`` (bytes at ``Upload-Offset``), ``OPTIONS``
(discovery). Extensions served: ``creation`` (``POST`` with ``Upload-Length`` and
``Upload-Metadata``), ``creation-with-upload`` (a first chunk in the POST body), ``termination``
(``DELETE``), ``expiration`` (``Upload-Expires``), ``checksum`` (``Upload-Checksum``, sha1 and
sha256). ``creation-defer-length`` and ``concatenation`` are not offered.

Statuses, as the spec says: a ``Tus-Resumable`` other than 1.0.0 (or none, but for OPTIONS) ->
412 with ``Tus-Version``; ``Upload-Offset`` different from the upload's -> 409; a PATCH without
``Content-Type: application/offset+octet-stream`` -> 415; an upload longer than ``Tus-Max-Size``
or a PATCH past ``Upload-Length`` -> 413; an unsupported checksum algorithm -> 400; a body whose
checksum differs -> 460 (and nothing of it is kept); an unknown upload (or another client's) ->
404; an expired one -> 410; a one-valued tus field sent twice -> 400. ``X-HTTP-Method-Override`` lets a client behind a proxy that knows only GET and POST send
PATCH and DELETE.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any, Mapping

from ..errors import BadRequest, Conflict, Gone, PayloadTooLarge, PreconditionFailed, UnsupportedMediaType

__all__ = [
    "TUS_VERSION", "EXTENSIONS", "CHECKSUM_ALGORITHMS", "OFFSET_CONTENT_TYPE", "Part", "UploadState",
    "Checksum", "check_version", "parse_metadata", "parse_length", "parse_offset", "parse_checksum",
    "creation", "patch_start", "options_headers", "common_headers", "head_headers", "offset_headers",
    "effective_method", "parts_to_cut", "check_single_valued", "SINGLE_VALUED",
]

TUS_VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "termination", "expiration", "checksum")
CHECKSUM_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_META_KEY = re.compile(r"^[\x21-\x2b\x2d-\x7e]{1,128}$")  # ASCII, no space, no comma
# The header is stored as sent and echoed in every HEAD: printable ASCII, spaces and tabs only
# (str.strip() would otherwise pass control characters, NEL or NBSP around a valid pair).
_META_HEADER = re.compile(r"^[\x20-\x7e\t]*$")
MAX_METADATA_KEYS = 64


@dataclass(frozen=True, slots=True)
class Part:
    """One part of the object store's multipart upload, durable there."""

    number: int
    etag: str
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadState:
    """One upload as recorded (the catalogue's database): everything another host needs.

    ``offset`` is the acknowledged offset: every byte before it is durable in the object store,
    either in a part of the multipart upload (``stored``) or in the **incomplete part**: the
    ``spooled`` bytes past the last part, stored as ``segments`` (objects of the uploads
    bucket, ``(key, size)`` in order) before the offset was recorded. ``spool_gen`` counts the
    parts cut: the name of a host's local copy of the incomplete part says the generation and
    length it holds (see :mod:`.service`)."""

    id: str
    owner: str
    length: int
    metadata: str  # the Upload-Metadata header as the client sent it
    created: float
    expires: float
    store_upload_id: str
    key: str
    parts: tuple[Part, ...] = ()
    spooled: int = 0
    spool_gen: int = 0
    completed: float | None = None
    segments: tuple[tuple[str, int], ...] = ()

    @property
    def stored(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def offset(self) -> int:
        # A completed upload keeps no parts list (the object is whole in the store).
        return self.length if self.completed is not None else self.stored + self.spooled

    @property
    def finished(self) -> bool:
        return self.completed is not None

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "length": self.length, "metadata": self.metadata,
                "created": self.created, "expires": self.expires, "store_upload_id": self.store_upload_id,
                "key": self.key, "parts": [[p.number, p.etag, p.size] for p in self.parts],
                "spooled": self.spooled, "spool_gen": self.spool_gen, "completed": self.completed,
                "segments": [[k, n] for k, n in self.segments]}

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> UploadState:
        return cls(id=d["id"], owner=d["owner"], length=d["length"], metadata=d["metadata"], created=d["created"],
                   expires=d["expires"], store_upload_id=d["store_upload_id"], key=d["key"],
                   parts=tuple(Part(n, e, s) for n, e, s in d["parts"]), spooled=d["spooled"],
                   spool_gen=d["spool_gen"], completed=d["completed"],
                   segments=tuple((k, n) for k, n in d.get("segments", ())))

    def with_parts(self, new: tuple[Part, ...], spool_gen: int) -> UploadState:
        """New parts stored: the incomplete part they consumed is gone (its segments too)."""
        return replace(self, parts=self.parts + new, spooled=0, spool_gen=spool_gen, segments=())


@dataclass(frozen=True, slots=True)
class Checksum:
    """An ``Upload-Checksum``: the algorithm's name and the expected digest."""

    algorithm: str
    digest: bytes
    hasher: Any = field(compare=False, repr=False, default=None)

    def new(self) -> Any:
        return CHECKSUM_ALGORITHMS[self.algorithm]()


# Fields tus defines as one value. Sent twice they are ambiguous (a proxy in front may act on
# the other copy: another offset, another checksum): 400 rather than the first one silently.
SINGLE_VALUED = ("upload-length", "upload-offset", "upload-metadata", "upload-checksum", "upload-defer-length",
                 "tus-resumable", "x-http-method-override", "content-type")


def check_single_valued(headers: Any) -> None:
    """400 if a tus field that is one value (:data:`SINGLE_VALUED`) is sent more than once."""
    get_all = getattr(headers, "get_all", None)
    if get_all is None:
        return
    for name in SINGLE_VALUED:
        if len(get_all(name)) > 1:
            raise BadRequest(f"{name} is given more than once")


def effective_method(method: str, headers: Mapping[str, str] | Any) -> str:
    """The request's method, or its ``X-HTTP-Method-Override`` on a POST (PATCH, DELETE)."""
    override = headers.get("x-http-method-override")
    if method == "POST" and override:
        override = override.strip().upper()
        if override in ("PATCH", "DELETE", "HEAD"):
            return override
        raise BadRequest(f"X-HTTP-Method-Override {override[:16]!r} is not PATCH, DELETE or HEAD")
    return method


def check_version(method: str, headers: Any) -> None:
    """412 for a request (other than OPTIONS) without ``Tus-Resumable: 1.0.0``."""
    if method == "OPTIONS":
        return
    if (headers.get("tus-resumable") or "").strip() != TUS_VERSION:
        raise PreconditionFailed(f"this server speaks tus {TUS_VERSION} (Tus-Resumable: {TUS_VERSION})")


def _number(value: str | None, name: str) -> int:
    if value is None:
        raise BadRequest(f"{name} is required")
    value = value.strip()
    if not _DIGITS.match(value):
        raise BadRequest(f"{name} is a non-negative integer")
    return int(value)


def parse_length(headers: Any, max_size: int) -> int:
    """``Upload-Length`` of a creation request: 400 if missing or bad, 413 over ``max_size``."""
    if "upload-defer-length" in headers:
        raise BadRequest("Upload-Defer-Length is not supported (creation-defer-length is not offered)")
    length = _number(headers.get("upload-length"), "Upload-Length")
    if length > max_size:
        raise PayloadTooLarge(f"Upload-Length {length} is over Tus-Max-Size {max_size}")
    return length


def parse_offset(headers: Any) -> int:
    return _number(headers.get("upload-offset"), "Upload-Offset")


def parse_metadata(value: str | None, max_bytes: int) -> dict[str, bytes | None]:
    """``Upload-Metadata``: comma-separated ``key`` or ``key base64(value)`` pairs, keys unique."""
    out: dict[str, bytes | None] = {}
    if value is None or not value.strip():
        return out
    if len(value) > max_bytes:
        raise BadRequest(f"Upload-Metadata is longer than {max_bytes} bytes")
    if not _META_HEADER.match(value):
        raise BadRequest("Upload-Metadata is printable ASCII (keys, spaces, commas and base64)")
    for item in value.split(","):
        key, _, encoded = item.strip().partition(" ")
        if not _META_KEY.match(key):
            raise BadRequest("an Upload-Metadata key is 1..128 ASCII characters without spaces or commas")
        if key in out:
            raise BadRequest(f"Upload-Metadata key {key!r} is given twice")
        encoded = encoded.strip()
        if encoded:
            try:
                out[key] = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise BadRequest(f"Upload-Metadata {key!r}: the value is not base64") from None
        else:
            out[key] = None
        if len(out) > MAX_METADATA_KEYS:
            raise BadRequest(f"Upload-Metadata has more than {MAX_METADATA_KEYS} keys")
    return out


def parse_checksum(value: str | None) -> Checksum | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; 400 for an unsupported algorithm."""
    if value is None:
        return None
    name, _, encoded = value.strip().partition(" ")
    if name not in CHECKSUM_ALGORITHMS:
        raise BadRequest(f"checksum algorithm {name[:16]!r} is not supported ({', '.join(CHECKSUM_ALGORITHMS)})")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise BadRequest("Upload-Checksum: the digest is not base64") from None
    if len(digest) != CHECKSUM_ALGORITHMS[name]().digest_size:
        raise BadRequest(f"Upload-Checksum: a {name} digest is {CHECKSUM_ALGORITHMS[name]().digest_size} bytes")
    return Checksum(name, digest)


def _body_checks(headers: Any, offset: int, length: int, *, required: bool) -> Checksum | None:
    ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != OFFSET_CONTENT_TYPE:
        if required or ctype:
            raise UnsupportedMediaType(f"a PATCH body is Content-Type: {OFFSET_CONTENT_TYPE}")
    declared = (headers.get("content-length") or "").strip()
    if _DIGITS.match(declared) and offset + int(declared) > length:
        raise PayloadTooLarge(f"the body ends past Upload-Length {length}")
    return parse_checksum(headers.get("upload-checksum"))


def creation(headers: Any, *, max_size: int, max_metadata_bytes: int) -> tuple[int, str, bool]:
    """A creation request's (length, raw Upload-Metadata, has a first chunk)."""
    length = parse_length(headers, max_size)
    raw = headers.get("upload-metadata") or ""
    parse_metadata(raw, max_metadata_bytes)
    declared = (headers.get("content-length") or "0").strip()
    with_body = bool(headers.get("content-type")) or (bool(_DIGITS.match(declared)) and int(declared) > 0) or \
        "transfer-encoding" in headers
    if with_body:
        _body_checks(headers, 0, length, required=True)
    return length, raw, with_body


def patch_start(state: UploadState, headers: Any, now: float) -> Checksum | None:
    """Checks a PATCH against the upload before any byte is read: its expiry (410), content
    type (415), offset (400, 409), length (413), checksum header (400)."""
    if not state.finished and now >= state.expires:
        raise Gone("the upload has expired")
    checksum = _body_checks(headers, state.offset, state.length, required=True)
    offset = parse_offset(headers)
    if offset != state.offset:
        raise Conflict(f"Upload-Offset {offset} is not the upload's offset {state.offset}")
    return checksum


def common_headers() -> list[tuple[str, str]]:
    return [("tus-resumable", TUS_VERSION)]


def options_headers(max_size: int) -> list[tuple[str, str]]:
    return [("tus-resumable", TUS_VERSION), ("tus-version", TUS_VERSION), ("tus-max-size", str(max_size)),
            ("tus-extension", ",".join(EXTENSIONS)),
            ("tus-checksum-algorithm", ",".join(CHECKSUM_ALGORITHMS))]


def _expires(state: UploadState) -> list[tuple[str, str]]:
    return [] if state.finished else [("upload-expires", formatdate(state.expires, usegmt=True))]


def head_headers(state: UploadState) -> list[tuple[str, str]]:
    """HEAD: offset, length, metadata as created; never cached."""
    h = [*common_headers(), ("upload-offset", str(state.offset)), ("upload-length", str(state.length)),
         ("cache-control", "no-store"), *_expires(state)]
    if state.metadata:
        h.append(("upload-metadata", state.metadata))
    return h


def offset_headers(state: UploadState) -> list[tuple[str, str]]:
    """A PATCH's (and a creation-with-upload's) answer: the acknowledged offset."""
    return [*common_headers(), ("upload-offset", str(state.offset)), *_expires(state)]


def parts_to_cut(spooled: int, part_size: int, *, final: bool, stored_parts: int) -> list[tuple[int, int]]:
    """The (start, size) regions of a spool of ``spooled`` bytes to send as parts: every whole
    ``part_size``, plus the rest when the upload is complete (the last part may be short; a
    zero-length upload is one empty part, as a multipart upload needs one)."""
    out = [(i * part_size, part_size) for i in range(spooled // part_size)]
    rest = spooled - len(out) * part_size
    if final and (rest or not (out or stored_parts)):
        out.append((len(out) * part_size, rest))
    return out
