"""S3 tag sets: the ``x-amz-tagging`` header, the ``<Tagging>`` document, and S3's limits on both.

Sans-IO: text in, a validated ``dict`` (tag key -> value, in the order given) or an S3 error out.
The gateway stores the dict in the object's record (``ObjectRecord.tags``) or the bucket's
tag record, and renders it back with :func:`tagging_document`.

The rules are S3's (API reference, ``Tag`` / ``S3Tag``): a key is 1-128 characters, a value
0-256, both made of letters, numbers, spaces and ``_ . : / = + - @``; keys are unique within a
set and may not start with ``aws:`` (reserved for AWS); an object has at most 10 tags, a bucket
at most 50. Violations are ``InvalidTag`` (400), as S3 answers them; a document that is not a
tagging document is ``MalformedXML``; a header that is not URL-encoded UTF-8, or that names a
key twice, ``InvalidArgument``.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote_to_bytes

from . import xmlio
from .errors import InvalidArgument, InvalidTag, MalformedXML

__all__ = ["MAX_OBJECT_TAGS", "MAX_BUCKET_TAGS", "MAX_KEY_CHARS", "MAX_VALUE_CHARS", "MAX_DOCUMENT_BYTES",
           "validate", "parse_header", "parse_document", "tagging_document"]

MAX_OBJECT_TAGS = 10
MAX_BUCKET_TAGS = 50
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 256
#: A document of 50 tags of the longest keys and values, every character written as a numeric
#: character reference (``&#x10FFFF;``), fits; anything larger is refused before parsing.
MAX_DOCUMENT_BYTES = 256 * 1024
#: The header's ``x-amz-tagging`` is refused past this many bytes before it is decoded (10 tags
#: of 384 characters, each character a 4-byte UTF-8 sequence written as 3 escapes ``%XX``).
MAX_HEADER_BYTES = MAX_OBJECT_TAGS * (MAX_KEY_CHARS + MAX_VALUE_CHARS) * 12 + 2 * MAX_OBJECT_TAGS

_PUNCTUATION = frozenset("_.:/=+-@")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _allowed(text: str) -> bool:
    """S3's pattern ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*``: letters, separators (spaces), numbers
    and seven punctuation characters."""
    return all(c in _PUNCTUATION or unicodedata.category(c)[0] in "LZN" for c in text)


def validate(pairs: list[tuple[str, str]], *, max_tags: int) -> dict[str, str]:
    """``pairs`` as a tag set, if S3 would accept it; else InvalidTag naming the first fault."""
    if len(pairs) > max_tags:
        what = "Object" if max_tags == MAX_OBJECT_TAGS else "Bucket"
        raise InvalidTag(f"{what} tags cannot be greater than {max_tags}")
    tags: dict[str, str] = {}
    for key, value in pairs:
        if not key:
            raise InvalidTag("The TagKey you have provided is invalid", TagKey=key)
        if len(key) > MAX_KEY_CHARS:
            raise InvalidTag(f"The TagKey you have provided is too long, max {MAX_KEY_CHARS}", TagKey=key)
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidTag(f"The TagValue you have provided is too long, max {MAX_VALUE_CHARS}",
                             TagKey=key, TagValue=value)
        if key.lower().startswith("aws:"):
            raise InvalidTag("Your TagKey cannot be prefixed with aws:", TagKey=key)
        if not _allowed(key):
            raise InvalidTag("The TagKey you have provided is invalid", TagKey=key)
        if not _allowed(value):
            raise InvalidTag("The TagValue you have provided is invalid", TagKey=key, TagValue=value)
        if key in tags:
            raise InvalidTag("Cannot provide multiple Tags with the same key", TagKey=key)
        tags[key] = value
    return tags


def _bad_header() -> InvalidArgument:
    """S3's answer to an ``x-amz-tagging`` that is not URL-encoded UTF-8, or names a key twice."""
    return InvalidArgument("The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL "
                           "query parameters without tag name duplicates.", ArgumentName="x-amz-tagging")


def _form_decode(raw: str) -> str:
    """One ``application/x-www-form-urlencoded`` component, strictly: ``+`` is a space, every
    ``%`` starts two hex digits, and the bytes are UTF-8 (else InvalidArgument)."""
    if _BAD_ESCAPE.search(raw) or not raw.isascii():
        raise _bad_header()
    try:
        return unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_header() from None


def parse_header(raw: str | None) -> dict[str, str]:
    """``x-amz-tagging: k1=v1&k2=v2`` (URL-encoded, as a query string) -> an object's tag set.

    An absent or empty header is no tags. The number of pairs is checked before anything is
    decoded, so a header of a thousand tags costs no more than its split."""
    if raw is None or not raw.strip():
        return {}
    raw = raw.strip()
    if len(raw) > MAX_HEADER_BYTES:
        raise InvalidTag(f"Object tags cannot be greater than {MAX_OBJECT_TAGS}")
    pieces = [p for p in raw.split("&") if p]
    if len(pieces) > MAX_OBJECT_TAGS:
        raise InvalidTag(f"Object tags cannot be greater than {MAX_OBJECT_TAGS}")
    pairs = []
    for piece in pieces:
        key, _, value = piece.partition("=")
        pairs.append((_form_decode(key), _form_decode(value)))
    if len({key for key, _ in pairs}) != len(pairs):
        # S3 answers a key named twice in the header (``a=1&a=2``, also when spelled
        # differently: ``a=1&%61=2``) as the header's own fault, InvalidArgument; in a
        # <Tagging> document it is InvalidTag (``validate``).
        raise _bad_header()
    return validate(pairs, max_tags=MAX_OBJECT_TAGS)


def parse_document(body: bytes, *, max_tags: int) -> dict[str, str]:
    """A ``<Tagging><TagSet><Tag><Key/><Value/></Tag>...</TagSet></Tagging>`` body (PutObjectTagging,
    PutBucketTagging, POST Object's ``tagging`` field) -> its tag set.

    Parsed as every request document is (``xmlio``: defusedxml, size bound, S3 namespace or
    none). MalformedXML when it is not a tagging document (no TagSet, a Tag without a Key or
    Value, other elements); InvalidTag when it is one S3 refuses. The count is checked while
    reading, so a document of a thousand tags is refused at the first one too many."""
    root = xmlio.parse_root(body, "Tagging", MAX_DOCUMENT_BYTES)
    tag_sets = [el for name, el in xmlio.children(root) if name == "TagSet"]
    if len(tag_sets) != 1 or len(root) != 1:
        raise MalformedXML("Tagging must hold exactly one TagSet")
    pairs: list[tuple[str, str]] = []
    for name, tag in xmlio.children(tag_sets[0]):
        if name != "Tag":
            raise MalformedXML(f"Unexpected element <{name}> in TagSet")
        if len(pairs) >= max_tags:
            validate(pairs + [("", "")], max_tags=max_tags)  # raises: too many
        fields: dict[str, str] = {}
        for fname, el in xmlio.children(tag):
            if fname not in ("Key", "Value") or fname in fields:
                raise MalformedXML(f"Unexpected element <{fname}> in Tag")
            fields[fname] = xmlio.text_of(el)
        if "Key" not in fields or "Value" not in fields:
            raise MalformedXML("Each Tag needs a Key and a Value")
        pairs.append((fields["Key"], fields["Value"]))
    return validate(pairs, max_tags=max_tags)


def tagging_document(tags: dict[str, str]) -> bytes:
    """GetObjectTagging / GetBucketTagging's body for ``tags`` (in their stored order)."""
    return xmlio.tagging(list(tags.items()))

