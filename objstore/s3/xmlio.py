"""S3 XML documents: builders for every response body, strict parsers for request bodies.

Builders return UTF-8 bytes with the XML declaration and the S3 namespace, elements in the order
S3 itself sends them, and never a character XML 1.0 forbids (listings refuse them unless asked
for encoding-type=url; other text has them replaced, see :func:`.errors.xml_text`). Parsers
accept the S3 namespace or none, refuse DTDs in any encoding (defusedxml, so no entity is ever
expanded), enforce a size limit and raise MalformedXML naming what is wrong.
"""

from __future__ import annotations

import email.utils
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Iterable, Sequence
from urllib.parse import quote

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from .errors import InvalidArgument, InvalidPartOrder, MalformedXML, xml_forbidden, xml_text

__all__ = [
    "NS", "iso8601", "http_date", "parse_http_date", "xml_text", "url_encode",
    "Owner", "BucketEntry", "ObjectEntry", "VersionEntry", "PartEntry", "UploadEntry",
    "DeletedEntry", "DeleteErrorEntry", "CompletedPart", "ObjectToDelete",
    "list_buckets", "list_objects_v1", "list_objects_v2", "list_object_versions",
    "location_constraint", "versioning_configuration", "initiate_multipart_upload",
    "complete_multipart_upload", "list_parts", "list_multipart_uploads", "copy_object_result",
    "copy_part_result", "delete_result", "post_response",
    "parse_complete_multipart_upload", "parse_delete", "parse_create_bucket_configuration",
    "parse_versioning_configuration", "MAX_DELETE_OBJECTS", "tagging", "parse_root", "children", "text_of",
]

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_DELETE_OBJECTS = 1000
CHECKSUM_ELEMENTS = {"crc32": "ChecksumCRC32", "crc32c": "ChecksumCRC32C",
                     "crc64nvme": "ChecksumCRC64NVME", "sha1": "ChecksumSHA1",
                     "sha256": "ChecksumSHA256"}


# --- text helpers ------------------------------------------------------------------------------

def iso8601(ts: float) -> str:
    """POSIX seconds -> ``2026-11-22T04:38:01.000Z`` (UTC, milliseconds)."""
    ms = int(round(ts * 1000))
    secs, ms = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(ts: float) -> str:
    """POSIX seconds -> IMF-fixdate ``Sun, 22 Nov 2026 04:38:01 GMT``.

    Formatted here rather than by ``email.utils.formatdate`` (a Last-Modified on every GET and
    HEAD: ~30 us each there, ~2 here)."""
    t = time.gmtime(int(ts))
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def parse_http_date(value: str) -> float | None:
    """An HTTP date (IMF-fixdate, RFC 850 or asctime) -> POSIX seconds; None if unparseable."""
    try:
        dt = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        import datetime as _dt
        dt = dt.replace(tzinfo=_dt.timezone.utc)
    return dt.timestamp()


def url_encode(value: str) -> str:
    """encoding-type=url form: every byte but unreserved and ``/`` %-escaped (decodes with
    either unquote or unquote_plus)."""
    return quote(value, safe="/")


class _W:
    """A tiny XML writer: ``w.el("Key", key)``, ``with w.tag("Contents"): ...``."""

    __slots__ = ("parts",)

    def __init__(self, root: str) -> None:
        self.parts = [_DECL, f'<{root} xmlns="{NS}">']

    def el(self, name: str, value: object) -> None:
        if value is None:
            return
        if isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = xml_text(str(value))
        self.parts.append(f"<{name}>{text}</{name}>")

    def open(self, name: str) -> None:
        self.parts.append(f"<{name}>")

    def close(self, name: str) -> None:
        self.parts.append(f"</{name}>")

    def done(self, root: str) -> bytes:
        self.parts.append(f"</{root}>")
        return "".join(self.parts).encode("utf-8")


def _etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


# --- records the builders take -----------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    id: str
    display_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketEntry:
    name: str
    created: float
    region: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectEntry:
    key: str
    last_modified: float
    etag: str                      # quoted or not; written quoted
    size: int
    storage_class: str = "STANDARD"
    owner: Owner | None = None     # V1 always shows it, V2 only with fetch-owner=true
    checksum_algorithm: str | None = None  # e.g. "CRC32"


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionEntry:
    key: str
    last_modified: float
    etag: str = ""
    size: int = 0
    version_id: str = "null"
    is_latest: bool = True
    is_delete_marker: bool = False
    storage_class: str = "STANDARD"
    owner: Owner | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PartEntry:
    part_number: int
    last_modified: float
    etag: str
    size: int
    checksums: dict[str, str] = field(default_factory=dict)  # {"crc32": "<base64>"}


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadEntry:
    key: str
    upload_id: str
    initiated: float
    storage_class: str = "STANDARD"
    owner: Owner | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletedEntry:
    key: str
    version_id: str | None = None
    delete_marker: bool | None = None
    delete_marker_version_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteErrorEntry:
    key: str
    code: str
    message: str
    version_id: str | None = None


def _owner(w: _W, tag: str, owner: Owner | None) -> None:
    if owner is None:
        return
    w.open(tag)
    w.el("ID", owner.id)
    w.el("DisplayName", owner.display_name)
    w.close(tag)


def _checksums(w: _W, checksums: dict[str, str] | None) -> None:
    for algo, value in (checksums or {}).items():
        w.el(CHECKSUM_ELEMENTS[algo.lower()], value)


def _common_prefixes(w: _W, prefixes: Iterable[str], enc) -> None:
    for p in prefixes:
        w.open("CommonPrefixes")
        w.el("Prefix", enc(p))
        w.close("CommonPrefixes")


def _as_is(value: str | None) -> str | None:
    """A listing value sent without encoding-type=url: XML 1.0 cannot carry NUL and most other
    C0 controls (not even as ``&#x1;``, which strict parsers refuse), so a key, prefix, marker
    or delimiter holding one is InvalidArgument, never a document the client cannot parse."""
    if value is not None and xml_forbidden(value):
        raise InvalidArgument("The listing holds a key, prefix, marker or delimiter with a character "
                              "XML 1.0 cannot carry (a control character such as NUL); list with "
                              "encoding-type=url", ArgumentName="encoding-type")
    return value


def _encoder(encoding_type: str | None):
    if encoding_type is None:
        return _as_is
    if encoding_type != "url":
        raise InvalidArgument("Invalid Encoding Method specified in Request",
                              ArgumentName="encoding-type", ArgumentValue=encoding_type)
    return lambda s: None if s is None else url_encode(s)


def _contents(w: _W, o: ObjectEntry, enc, *, with_owner: bool) -> None:
    w.open("Contents")
    w.el("Key", enc(o.key))
    w.el("LastModified", iso8601(o.last_modified))
    w.el("ETag", _etag(o.etag))
    if o.checksum_algorithm:
        w.el("ChecksumAlgorithm", o.checksum_algorithm.upper())
    w.el("Size", o.size)
    if with_owner:
        _owner(w, "Owner", o.owner)
    w.el("StorageClass", o.storage_class)
    w.close("Contents")


# --- builders ----------------------------------------------------------------------------------

def list_buckets(*, owner: Owner, buckets: Sequence[BucketEntry],
                 continuation_token: str | None = None, prefix: str | None = None) -> bytes:
    """ListAllMyBucketsResult (ListBuckets)."""
    w = _W("ListAllMyBucketsResult")
    _owner(w, "Owner", owner)
    w.open("Buckets")
    for b in buckets:
        w.open("Bucket")
        w.el("Name", b.name)
        w.el("CreationDate", iso8601(b.created))
        w.el("BucketRegion", b.region)
        w.close("Bucket")
    w.close("Buckets")
    w.el("ContinuationToken", continuation_token)
    w.el("Prefix", prefix)
    return w.done("ListAllMyBucketsResult")


def list_objects_v1(*, bucket: str, prefix: str = "", marker: str = "", max_keys: int = 1000,
                    delimiter: str | None = None, is_truncated: bool = False,
                    next_marker: str | None = None, contents: Sequence[ObjectEntry] = (),
                    common_prefixes: Sequence[str] = (), encoding_type: str | None = None) -> bytes:
    """ListBucketResult for ListObjects (V1). S3 sends NextMarker only with a delimiter."""
    enc = _encoder(encoding_type)
    w = _W("ListBucketResult")
    w.el("Name", bucket)
    w.el("Prefix", enc(prefix))
    w.el("Marker", enc(marker))
    if is_truncated and next_marker is not None:
        w.el("NextMarker", enc(next_marker))
    w.el("MaxKeys", max_keys)
    w.el("Delimiter", enc(delimiter) if delimiter else None)
    w.el("IsTruncated", is_truncated)
    w.el("EncodingType", encoding_type)
    for o in contents:
        _contents(w, o, enc, with_owner=True)
    _common_prefixes(w, common_prefixes, enc)
    return w.done("ListBucketResult")


def list_objects_v2(*, bucket: str, prefix: str = "", max_keys: int = 1000,
                    delimiter: str | None = None, is_truncated: bool = False,
                    continuation_token: str | None = None,
                    next_continuation_token: str | None = None, start_after: str | None = None,
                    contents: Sequence[ObjectEntry] = (), common_prefixes: Sequence[str] = (),
                    encoding_type: str | None = None, fetch_owner: bool = False) -> bytes:
    """ListBucketResult for ListObjectsV2. KeyCount = len(contents) + len(common_prefixes)."""
    enc = _encoder(encoding_type)
    w = _W("ListBucketResult")
    w.el("Name", bucket)
    w.el("Prefix", enc(prefix))
    w.el("ContinuationToken", continuation_token)
    if is_truncated:
        w.el("NextContinuationToken", next_continuation_token)
    w.el("KeyCount", len(contents) + len(common_prefixes))
    w.el("MaxKeys", max_keys)
    w.el("Delimiter", enc(delimiter) if delimiter else None)
    w.el("IsTruncated", is_truncated)
    w.el("EncodingType", encoding_type)
    w.el("StartAfter", enc(start_after) if start_after else None)
    for o in contents:
        _contents(w, o, enc, with_owner=fetch_owner)
    _common_prefixes(w, common_prefixes, enc)
    return w.done("ListBucketResult")


def list_object_versions(*, bucket: str, prefix: str = "", key_marker: str = "",
                         version_id_marker: str = "", max_keys: int = 1000,
                         delimiter: str | None = None, is_truncated: bool = False,
                         next_key_marker: str | None = None,
                         next_version_id_marker: str | None = None,
                         versions: Sequence[VersionEntry] = (), common_prefixes: Sequence[str] = (),
                         encoding_type: str | None = None) -> bytes:
    """ListVersionsResult. For an unversioned bucket pass one VersionEntry per object (``null``,
    latest); Version and DeleteMarker elements are written in the order given."""
    enc = _encoder(encoding_type)
    w = _W("ListVersionsResult")
    w.el("Name", bucket)
    w.el("Prefix", enc(prefix))
    w.el("KeyMarker", enc(key_marker))
    w.el("VersionIdMarker", version_id_marker)
    if is_truncated:
        w.el("NextKeyMarker", enc(next_key_marker) if next_key_marker is not None else None)
        w.el("NextVersionIdMarker", next_version_id_marker)
    w.el("MaxKeys", max_keys)
    w.el("Delimiter", enc(delimiter) if delimiter else None)
    w.el("IsTruncated", is_truncated)
    w.el("EncodingType", encoding_type)
    for v in versions:
        tag = "DeleteMarker" if v.is_delete_marker else "Version"
        w.open(tag)
        w.el("Key", enc(v.key))
        w.el("VersionId", v.version_id)
        w.el("IsLatest", v.is_latest)
        w.el("LastModified", iso8601(v.last_modified))
        if not v.is_delete_marker:
            w.el("ETag", _etag(v.etag))
            w.el("Size", v.size)
        _owner(w, "Owner", v.owner)
        if not v.is_delete_marker:
            w.el("StorageClass", v.storage_class)
        w.close(tag)
    _common_prefixes(w, common_prefixes, enc)
    return w.done("ListVersionsResult")


def location_constraint(region: str) -> bytes:
    """GetBucketLocation: empty for us-east-1, as S3 answers."""
    if region in ("", "us-east-1"):
        return f'{_DECL}<LocationConstraint xmlns="{NS}"/>'.encode()
    return f'{_DECL}<LocationConstraint xmlns="{NS}">{xml_text(region)}</LocationConstraint>'.encode()


def versioning_configuration(status: str | None = None, mfa_delete: str | None = None) -> bytes:
    """GetBucketVersioning: no Status when versioning was never enabled."""
    w = _W("VersioningConfiguration")
    w.el("Status", status)
    w.el("MfaDelete", mfa_delete)
    return w.done("VersioningConfiguration")


def initiate_multipart_upload(*, bucket: str, key: str, upload_id: str) -> bytes:
    w = _W("InitiateMultipartUploadResult")
    w.el("Bucket", bucket)
    w.el("Key", key)
    w.el("UploadId", upload_id)
    return w.done("InitiateMultipartUploadResult")


def complete_multipart_upload(*, location: str, bucket: str, key: str, etag: str,
                              checksums: dict[str, str] | None = None,
                              checksum_type: str | None = None) -> bytes:
    w = _W("CompleteMultipartUploadResult")
    w.el("Location", location)
    w.el("Bucket", bucket)
    w.el("Key", key)
    w.el("ETag", _etag(etag))
    _checksums(w, checksums)
    w.el("ChecksumType", checksum_type)
    return w.done("CompleteMultipartUploadResult")


def post_response(*, location: str, bucket: str, key: str, etag: str) -> bytes:
    """POST Object's answer to ``success_action_status=201``."""
    w = _W("PostResponse")
    w.el("Location", location)
    w.el("Bucket", bucket)
    w.el("Key", key)
    w.el("ETag", _etag(etag))
    return w.done("PostResponse")


def list_parts(*, bucket: str, key: str, upload_id: str, owner: Owner | None,
               part_number_marker: int = 0, next_part_number_marker: int | None = None,
               max_parts: int = 1000, is_truncated: bool = False, parts: Sequence[PartEntry] = (),
               storage_class: str = "STANDARD", checksum_algorithm: str | None = None) -> bytes:
    w = _W("ListPartsResult")
    w.el("Bucket", bucket)
    w.el("Key", key)
    w.el("UploadId", upload_id)
    _owner(w, "Initiator", owner)
    _owner(w, "Owner", owner)
    w.el("StorageClass", storage_class)
    w.el("PartNumberMarker", part_number_marker)
    w.el("NextPartNumberMarker", next_part_number_marker if next_part_number_marker is not None
         else (parts[-1].part_number if parts else 0))
    w.el("MaxParts", max_parts)
    w.el("IsTruncated", is_truncated)
    w.el("ChecksumAlgorithm", checksum_algorithm)
    for p in parts:
        w.open("Part")
        w.el("PartNumber", p.part_number)
        w.el("LastModified", iso8601(p.last_modified))
        w.el("ETag", _etag(p.etag))
        w.el("Size", p.size)
        _checksums(w, p.checksums)
        w.close("Part")
    return w.done("ListPartsResult")


def list_multipart_uploads(*, bucket: str, key_marker: str = "", upload_id_marker: str = "",
                           next_key_marker: str | None = None,
                           next_upload_id_marker: str | None = None, prefix: str = "",
                           delimiter: str | None = None, max_uploads: int = 1000,
                           is_truncated: bool = False, uploads: Sequence[UploadEntry] = (),
                           common_prefixes: Sequence[str] = (),
                           encoding_type: str | None = None) -> bytes:
    enc = _encoder(encoding_type)
    w = _W("ListMultipartUploadsResult")
    w.el("Bucket", bucket)
    w.el("KeyMarker", enc(key_marker))
    w.el("UploadIdMarker", upload_id_marker)
    w.el("NextKeyMarker", enc(next_key_marker if next_key_marker is not None else
                              (uploads[-1].key if uploads else "")))
    w.el("NextUploadIdMarker", next_upload_id_marker if next_upload_id_marker is not None else
         (uploads[-1].upload_id if uploads else ""))
    w.el("Delimiter", enc(delimiter) if delimiter else None)
    w.el("Prefix", enc(prefix))
    w.el("MaxUploads", max_uploads)
    w.el("IsTruncated", is_truncated)
    w.el("EncodingType", encoding_type)
    for u in uploads:
        w.open("Upload")
        w.el("Key", enc(u.key))
        w.el("UploadId", u.upload_id)
        _owner(w, "Initiator", u.owner)
        _owner(w, "Owner", u.owner)
        w.el("StorageClass", u.storage_class)
        w.el("Initiated", iso8601(u.initiated))
        w.close("Upload")
    _common_prefixes(w, common_prefixes, enc)
    return w.done("ListMultipartUploadsResult")


def copy_object_result(*, etag: str, last_modified: float,
                       checksums: dict[str, str] | None = None) -> bytes:
    w = _W("CopyObjectResult")
    w.el("LastModified", iso8601(last_modified))
    w.el("ETag", _etag(etag))
    _checksums(w, checksums)
    return w.done("CopyObjectResult")


def copy_part_result(*, etag: str, last_modified: float,
                     checksums: dict[str, str] | None = None) -> bytes:
    w = _W("CopyPartResult")
    w.el("LastModified", iso8601(last_modified))
    w.el("ETag", _etag(etag))
    _checksums(w, checksums)
    return w.done("CopyPartResult")


def delete_result(*, deleted: Sequence[DeletedEntry] = (), errors: Sequence[DeleteErrorEntry] = (),
                  quiet: bool = False) -> bytes:
    """DeleteResult (DeleteObjects); in Quiet mode only the errors are listed."""
    w = _W("DeleteResult")
    if not quiet:
        for d in deleted:
            w.open("Deleted")
            w.el("Key", d.key)
            w.el("VersionId", d.version_id)
            w.el("DeleteMarker", d.delete_marker)
            w.el("DeleteMarkerVersionId", d.delete_marker_version_id)
            w.close("Deleted")
    for e in errors:
        w.open("Error")
        w.el("Key", e.key)
        w.el("VersionId", e.version_id)
        w.el("Code", e.code)
        w.el("Message", e.message)
        w.close("Error")
    return w.done("DeleteResult")


def tagging(tags: Sequence[tuple[str, str]]) -> bytes:
    """GetObjectTagging / GetBucketTagging: ``<Tagging><TagSet><Tag>...`` (an empty TagSet when
    there are none, as GetObjectTagging answers for an untagged object)."""
    w = _W("Tagging")
    w.open("TagSet")
    for key, value in tags:
        w.open("Tag")
        w.el("Key", key)
        w.el("Value", value)
        w.close("Tag")
    w.close("TagSet")
    return w.done("Tagging")


# --- parsers -----------------------------------------------------------------------------------

def _parse(body: bytes, root: str, max_bytes: int) -> ET.Element:
    """Parse a request document with defusedxml: a DTD (and so any entity, internal or
    external) is refused whatever the document's encoding, since the check runs on what expat
    decoded, not on the raw bytes."""
    if len(body) > max_bytes:
        raise MalformedXML(f"The XML you provided is larger than {max_bytes} bytes")
    if not body.strip():
        raise MalformedXML("The XML you provided was empty")
    try:
        parser = DefusedXMLParser(forbid_dtd=True, forbid_entities=True, forbid_external=True)
        parser.feed(body)
        el = parser.close()
    except DefusedXmlException as e:
        raise MalformedXML(f"DTDs, entities and external references are not allowed ({e})") from None
    except (ET.ParseError, ValueError, LookupError) as e:
        raise MalformedXML(f"The XML you provided was not well-formed: {e}") from None
    if _local(el.tag) != root or _ns(el.tag) not in ("", NS):
        raise MalformedXML(f"The root element must be {root}, not {_local(el.tag)}")
    return el


def parse_root(body: bytes, root: str, max_bytes: int) -> ET.Element:
    """A request document's root element, parsed and checked as :func:`_parse` does (for the
    parsers of other modules: ``tagging``)."""
    return _parse(body, root, max_bytes)


def children(el: ET.Element) -> list[tuple[str, ET.Element]]:
    """``el``'s child elements as (local name, element)."""
    return _children(el)


def text_of(el: ET.Element) -> str:
    """``el``'s text (MalformedXML if it holds elements)."""
    return _text(el)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ns(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def _children(el: ET.Element) -> list[tuple[str, ET.Element]]:
    return [(_local(c.tag), c) for c in el]


def _text(el: ET.Element) -> str:
    if len(el):
        raise MalformedXML(f"<{_local(el.tag)}> must hold text, not elements")
    return el.text or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletedPart:
    part_number: int
    etag: str                                             # unquoted
    checksums: dict[str, str] = field(default_factory=dict)  # {"crc32": "<base64>"}


_CHECKSUM_BY_ELEMENT = {v: k for k, v in CHECKSUM_ELEMENTS.items()}


def parse_complete_multipart_upload(body: bytes, *, max_parts: int = 10_000,
                                    max_bytes: int = 4 * 1024 * 1024) -> list[CompletedPart]:
    """CompleteMultipartUpload body -> parts in request order.

    Raises MalformedXML (bad document, no parts, bad part number) and InvalidPartOrder (part
    numbers not strictly ascending).
    """
    root = _parse(body, "CompleteMultipartUpload", max_bytes)
    parts: list[CompletedPart] = []
    for name, el in _children(root):
        if name != "Part":
            raise MalformedXML(f"Unexpected element <{name}> in CompleteMultipartUpload")
        number: int | None = None
        etag: str | None = None
        sums: dict[str, str] = {}
        for cname, c in _children(el):
            if cname == "PartNumber":
                t = _text(c).strip()
                if not t.isdigit() or not 1 <= int(t) <= max_parts:
                    raise MalformedXML(f"PartNumber must be an integer between 1 and {max_parts}")
                number = int(t)
            elif cname == "ETag":
                etag = _text(c).strip().strip('"')
            elif cname in _CHECKSUM_BY_ELEMENT:
                sums[_CHECKSUM_BY_ELEMENT[cname]] = _text(c).strip()
            else:
                raise MalformedXML(f"Unexpected element <{cname}> in Part")
        if number is None or etag is None:
            raise MalformedXML("Each Part needs a PartNumber and an ETag")
        if parts and number <= parts[-1].part_number:
            raise InvalidPartOrder()
        parts.append(CompletedPart(part_number=number, etag=etag, checksums=sums))
        if len(parts) > max_parts:
            raise MalformedXML(f"More than {max_parts} parts")
    if not parts:
        raise MalformedXML("CompleteMultipartUpload must list at least one Part")
    return parts


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectToDelete:
    key: str
    version_id: str | None = None
    etag: str | None = None  # delete only if the object's ETag is this one


def parse_delete(body: bytes, *, max_objects: int = MAX_DELETE_OBJECTS,
                 max_bytes: int = 2 * 1024 * 1024) -> tuple[list[ObjectToDelete], bool]:
    """DeleteObjects body -> (objects, quiet). 1..1000 objects, each with a Key."""
    root = _parse(body, "Delete", max_bytes)
    objects: list[ObjectToDelete] = []
    quiet = False
    for name, el in _children(root):
        if name == "Quiet":
            t = _text(el).strip().lower()
            if t not in ("true", "false"):
                raise MalformedXML("Quiet must be true or false")
            quiet = t == "true"
        elif name == "Object":
            key: str | None = None
            version: str | None = None
            etag: str | None = None
            for cname, c in _children(el):
                if cname == "Key":
                    key = _text(c)
                elif cname == "VersionId":
                    version = _text(c).strip() or None
                elif cname == "ETag":
                    etag = _text(c).strip() or None
                elif cname in ("LastModifiedTime", "Size"):
                    pass  # directory buckets' conditions: accepted, not evaluated here
                else:
                    raise MalformedXML(f"Unexpected element <{cname}> in Object")
            if key is None or key == "":
                raise MalformedXML("Each Object needs a non-empty Key")
            objects.append(ObjectToDelete(key=key, version_id=version, etag=etag))
            if len(objects) > max_objects:
                raise MalformedXML(f"The request may delete at most {max_objects} objects")
        else:
            raise MalformedXML(f"Unexpected element <{name}> in Delete")
    if not objects:
        raise MalformedXML("Delete must list at least one Object")
    return objects, quiet


def parse_create_bucket_configuration(body: bytes, *, max_bytes: int = 64 * 1024) -> str | None:
    """CreateBucket body -> LocationConstraint, or None for an empty body / no constraint."""
    if not body.strip():
        return None
    root = _parse(body, "CreateBucketConfiguration", max_bytes)
    location: str | None = None
    for name, el in _children(root):
        if name == "LocationConstraint":
            location = _text(el).strip() or None
        elif name in ("Location", "Bucket", "Tags"):
            pass  # directory-bucket / tagging fields: accepted, ignored
        else:
            raise MalformedXML(f"Unexpected element <{name}> in CreateBucketConfiguration")
    return location


def parse_versioning_configuration(body: bytes, *, max_bytes: int = 64 * 1024) -> str | None:
    """PutBucketVersioning body -> "Enabled" / "Suspended" / None."""
    root = _parse(body, "VersioningConfiguration", max_bytes)
    status: str | None = None
    for name, el in _children(root):
        if name == "Status":
            status = _text(el).strip()
            if status not in ("Enabled", "Suspended"):
                raise MalformedXML("Status must be Enabled or Suspended")
        elif name == "MfaDelete":
            pass
        else:
            raise MalformedXML(f"Unexpected element <{name}> in VersioningConfiguration")
    return status
