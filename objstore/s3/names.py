"""Bucket and key names, request routing (path- and virtual-host-style), object metadata headers."""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from headwater.http.types import Headers

from .errors import InvalidArgument, InvalidBucketName, InvalidURI, KeyTooLongError, MetadataTooLarge

__all__ = [
    "MAX_KEY_BYTES", "MAX_METADATA_BYTES", "STANDARD_HEADERS", "RESPONSE_OVERRIDES",
    "validate_bucket_name", "validate_key", "Target", "host_bucket", "parse_target", "parse_query",
    "parse_copy_source", "extract_metadata", "metadata_value_out", "extract_standard_headers",
    "without_aws_chunked", "response_overrides", "WEBSITE_REDIRECT", "MAX_REDIRECT_BYTES",
    "validate_website_redirect",
]

MAX_KEY_BYTES = 1024
MAX_METADATA_BYTES = 2 * 1024
META_PREFIX = "x-amz-meta-"

# The object's website redirect: stored and returned on GET/HEAD like the headers below.
WEBSITE_REDIRECT = "x-amz-website-redirect-location"
# "The length of the value is limited to 2 KB" (S3 user guide, configuring a webpage redirect).
MAX_REDIRECT_BYTES = 2 * 1024

# Stored with the object and returned on GET/HEAD exactly as sent.
STANDARD_HEADERS = ("content-type", "content-encoding", "content-disposition", "content-language",
                    "cache-control", "expires", WEBSITE_REDIRECT)

# GET query parameters that override a response header.
RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_BAD_BUCKET_AFFIXES = (("xn--", "sthree-", "amzn-s3-demo-"), ("-s3alias", "--ol-s3", "--x-s3", ".mrap"))


def validate_bucket_name(name: str) -> None:
    """S3's general-purpose bucket naming rules, else InvalidBucketName."""
    ok = (_BUCKET.fullmatch(name) is not None and ".." not in name and not name.startswith(_BAD_BUCKET_AFFIXES[0])
          and not name.endswith(_BAD_BUCKET_AFFIXES[1]) and not _is_ipv4(name))
    if not ok:
        raise InvalidBucketName(BucketName=name)


def _is_ipv4(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def validate_key(key: str) -> None:
    """Non-empty and at most 1024 bytes of UTF-8."""
    if not key:
        raise InvalidArgument("Object key must not be empty", ArgumentName="key")
    n = len(key.encode("utf-8", "surrogateescape"))
    if n > MAX_KEY_BYTES:
        raise KeyTooLongError(Size=n, MaxSizeAllowed=MAX_KEY_BYTES)


def _decode(raw: str, *, plus_is_space: bool = False) -> str:
    if raw.isascii() and "%" not in raw and not (plus_is_space and "+" in raw):
        return raw  # nothing to decode (most keys and bucket names)
    if plus_is_space:
        raw = raw.replace("+", " ")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidURI(URI=raw) from None


def parse_query(raw_query: str) -> dict[str, list[str]]:
    """``a=1&b&c=x+y`` -> ``{"a": ["1"], "b": [""], "c": ["x y"]}`` (decoded once, ``+`` is space)."""
    out: dict[str, list[str]] = {}
    for piece in raw_query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        out.setdefault(_decode(name, plus_is_space=True), []).append(_decode(value, plus_is_space=True))
    return out


class Target(NamedTuple):
    bucket: str | None
    key: str | None
    query: dict[str, list[str]]


def _strip_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_bucket(host: str, base_domains: list[str] | tuple[str, ...] = ()) -> str | None:
    """The bucket a virtual-host-style Host names (``<bucket>.<base domain>``, port ignored, the
    longest base domain first), else None."""
    h = _strip_port(host or "")
    for base in _longest_first(tuple(base_domains)):
        if h.endswith("." + base):
            return h[: -len(base) - 1]
    return None


@functools.lru_cache(maxsize=16)
def _longest_first(base_domains: tuple[str, ...]) -> tuple[str, ...]:
    """The base domains, ports stripped, empty ones left out, longest first (a gateway has one
    list: sorted once, not twice a request)."""
    return tuple(b for b in sorted((_strip_port(b) for b in base_domains), key=len, reverse=True) if b)


def parse_target(host: str, raw_path: str, raw_query: str, *,
                 base_domains: list[str] | tuple[str, ...] = ()) -> Target:
    """Route a request to ``(bucket, key, query)``.

    Virtual-host style when the Host (port ignored) is ``<bucket>.<base domain>`` for one of
    ``base_domains`` (e.g. ``["s3.localhost", "localhost"]``; the longest match wins), else path
    style (``/<bucket>/<key>``). The key is %-decoded exactly once; ``/`` and ``//`` in it are kept.
    An empty key is None (a bucket operation).
    """
    query = parse_query(raw_query)
    bucket = host_bucket(host, base_domains)
    path = raw_path or "/"
    if not path.startswith("/"):
        raise InvalidURI(URI=raw_path)
    if bucket is not None:
        key = _decode(path[1:])
        return Target(bucket, key or None, query)
    rest = path[1:]
    if not rest:
        return Target(None, None, query)
    b, sep, k = rest.partition("/")
    bucket = _decode(b)
    key = _decode(k) if sep else ""
    return Target(bucket or None, key or None, query)


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    """``x-amz-copy-source`` (``[/]bucket/key[?versionId=v]``, URL-encoded) -> (bucket, key, version)."""
    raw, _, q = value.strip().partition("?")
    version: str | None = None
    if q:
        params = parse_query(q)
        if set(params) - {"versionId"}:
            raise InvalidArgument("Invalid copy source", ArgumentName="x-amz-copy-source",
                                  ArgumentValue=value)
        version = params.get("versionId", [None])[0]
    decoded = _decode(raw)
    if decoded.startswith("/"):
        decoded = decoded[1:]
    bucket, sep, key = decoded.partition("/")
    if not bucket or not sep or not key:
        raise InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                              ArgumentName="x-amz-copy-source", ArgumentValue=value)
    return bucket, key, version


def extract_metadata(headers: Headers, *, limit: int = MAX_METADATA_BYTES) -> dict[str, str]:
    """``x-amz-meta-*`` headers -> ``{name-without-prefix: value}`` (names lower-case, repeats
    joined by ``,``). Values stay as the wire's latin-1 text so they go back out byte-identical.
    The size S3 limits (2 KiB) is the bytes of every name and value; past it MetadataTooLarge.
    """
    meta: dict[str, str] = {}
    for name, value in headers:
        if name.startswith(META_PREFIX):
            k = name[len(META_PREFIX):]
            v = value.strip(" \t")  # not str.strip(): 0x85 and 0xA0 are bytes of UTF-8 text here
            meta[k] = f"{meta[k]},{v}" if k in meta else v
    size = sum(len(k.encode("latin-1", "replace")) + len(v.encode("latin-1", "replace"))
               for k, v in meta.items())
    if size > limit:
        raise MetadataTooLarge(Size=size, MaxSizeAllowed=limit)
    return meta


# RFC 2047: an encoded-word is at most 75 characters; "=?UTF-8?B?" and "?=" take 12 of them,
# and 45 bytes make 60 base64 characters.
_WORD_BYTES = 45


def metadata_value_out(value: str) -> str:
    """An ``x-amz-meta-*`` value as S3 returns it: as stored when it is US-ASCII, otherwise
    RFC 2047 encoded ("encoded as per RFC 2047 to make them mail-safe before returning", the
    S3 user guide on user-defined metadata), as ``=?UTF-8?B?...?=`` words of at most 75
    characters, separated by spaces, split between characters.

    ``value`` holds the wire's bytes decoded as latin-1 (see :func:`extract_metadata`). Those
    bytes are read as UTF-8, which is what clients send (botocore sends and signs the UTF-8 of
    the text); bytes that are not UTF-8 are read as ISO-8859-1. A decoder (Python's
    ``email.header``, Go's ``mime.WordDecoder``) gives the sender's text back.
    """
    if value.isascii():
        return value
    raw = value.encode("latin-1", "replace")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = value
    words: list[str] = []
    chunk = b""
    for ch in text:
        b = ch.encode("utf-8", "surrogatepass")
        if len(chunk) + len(b) > _WORD_BYTES:
            words.append(chunk)
            chunk = b""
        chunk += b
    words.append(chunk)
    return " ".join(f"=?UTF-8?B?{base64.b64encode(w).decode('ascii')}?=" for w in words)


def without_aws_chunked(content_encoding: str) -> str:
    """Content-Encoding less the ``aws-chunked`` coding (the framing of the request body, not a
    coding of the object), the rest exactly as sent: ``deflate, gzip`` stays ``deflate, gzip``;
    ``aws-chunked, gzip`` becomes ``gzip``; ``aws-chunked`` alone becomes empty."""
    codings = content_encoding.split(",")
    kept = [c for c in codings if c.strip().lower() != "aws-chunked"]
    if len(kept) == len(codings):
        return content_encoding
    return ",".join(kept).strip(" \t")


def extract_standard_headers(headers: Headers) -> dict[str, str]:
    """The STANDARD_HEADERS present, byte for byte as sent; ``aws-chunked`` is dropped from
    Content-Encoding (and Content-Encoding with it when nothing else is left)."""
    out: dict[str, str] = {}
    for name in STANDARD_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if name == "content-encoding":
            value = without_aws_chunked(value)
            if not value.strip():
                continue
        elif name == WEBSITE_REDIRECT:
            validate_website_redirect(value)
        out[name] = value
    return out


def validate_website_redirect(value: str) -> None:
    """``x-amz-website-redirect-location`` as the S3 user guide allows it: starting with ``/``,
    ``http://`` or ``https://``, at most 2 KB; else InvalidArgument (S3's own code for it is
    not documented; docs/s3-compat.md). Why refuse rather than store: a website endpoint sends
    the value as a Location, so a ``javascript:`` or ``data:`` value must never get in."""
    if not value.startswith(("/", "http://", "https://")):
        raise InvalidArgument("The website redirect location must have a prefix of 'http://' or 'https://' "
                              "or '/'.", ArgumentName=WEBSITE_REDIRECT, ArgumentValue=value)
    n = len(value.encode("latin-1", "replace"))  # the wire's bytes (values are latin-1 text here)
    if n > MAX_REDIRECT_BYTES:
        raise InvalidArgument(f"The website redirect location is {n} bytes; at most {MAX_REDIRECT_BYTES} "
                              "are allowed.", ArgumentName=WEBSITE_REDIRECT)


# Characters an HTTP field value cannot hold (RFC 9110 5.5: CTLs but HTAB, and DEL); CR and LF
# would end the header and start another (response splitting).
_FIELD_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A field name: an RFC 9110 token (no space, colon, control or non-ASCII character).
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def response_overrides(query: dict[str, list[str]]) -> dict[str, str]:
    """GET's ``response-*`` query parameters -> ``{header name: value}``.

    A value with a control character (CR, LF, NUL, ...) is InvalidArgument, as on S3: it cannot be
    sent as a header. Other text goes out as its UTF-8 bytes (header values here are the wire's
    bytes decoded as latin-1), so ``filename="日本.txt"`` reaches the client as sent.
    """
    out: dict[str, str] = {}
    for param, header in RESPONSE_OVERRIDES.items():
        if param not in query:
            continue
        value = query[param][-1]
        refuse_control_characters(param, value)
        out[header] = value.encode("utf-8").decode("latin-1")
    return out


def refuse_bad_header_name(name: str) -> None:
    """InvalidArgument for a name meant to go out as a header's (``x-amz-meta-*`` from a POST
    form's field) that is not an HTTP token: stored, every answer that sends it is unsendable.
    Names that came in as headers always are tokens; a form field's name can be any text."""
    if not _FIELD_NAME.fullmatch(name):
        shown = name.encode("unicode_escape").decode("ascii")  # (a control character: no XML's)
        raise InvalidArgument(f"'{shown}' cannot be the name of an HTTP header", ArgumentName=shown)


def refuse_control_characters(name: str, value: str) -> None:
    """InvalidArgument for a value meant to go out as a header that holds a control character (CR,
    LF, NUL, ...): an HTTP header cannot carry one, and a stored one would make every answer that
    sends it unsendable. Header values that came in as headers never hold one; the fields of a
    POST form (``s3.formdata``) and query parameters can."""
    if _FIELD_VALUE_BAD.search(value):
        raise InvalidArgument(f"{name} holds a control character, which an HTTP header cannot carry",
                              ArgumentName=name, ArgumentValue=value.encode("unicode_escape").decode("ascii"))
