"""W3C ClearKey licence requests and responses (EME, "Clear Key" section). Sans-IO.

A request is the JSON a browser's ClearKey CDM emits as its ``message`` (the licence request
format of the EME spec)::

    {"kids": ["nrQFDeRLSAKTLifXUIPiZg"], "type": "temporary"}

and the answer is a JSON Web Key Set with the keys as ``oct`` keys::

    {"keys": [{"kty": "oct", "kid": "nrQFDeRLSAKTLifXUIPiZg", "k": "FmY0xnWCPCNaSpRG-tUuTQ"}],
     "type": "temporary"}

Every KID and key is base64url *without padding* (RFC 4648 section 5, as JWK requires); a KID
or key is 16 bytes, so its text is exactly 22 characters. Parsing is strict and bounded: the
body's size, the number of KIDs, each KID's alphabet and length; anything else is a
:class:`~headwater.drm.errors.BadRequest` naming what is wrong (never echoing the input at
length). Unknown members are ignored, as browsers may add some.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Iterable

from ..errors import BadRequest, PayloadTooLarge

__all__ = [
    "KID_BYTES", "SESSION_TYPES", "MAX_REQUEST_BYTES", "MAX_KIDS",
    "LicenceRequest", "b64url", "unb64url", "parse_request", "build_response",
]

KID_BYTES = 16
#: The EME session types a ClearKey licence can be for.
SESSION_TYPES = ("temporary", "persistent-license")
#: Defaults for the bounds; the daemon's config may lower or raise them.
MAX_REQUEST_BYTES = 8 * 1024
MAX_KIDS = 32

_B64URL_16 = re.compile(r"[A-Za-z0-9_-]{21}[AQgw]")  # 22 characters whose last carries 2 bits


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenceRequest:
    """A parsed licence request: the KIDs (16 bytes each, in request order, no duplicates) and
    the session type."""

    kids: tuple[bytes, ...]
    type: str


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str, *, size: int = KID_BYTES) -> bytes:
    """The ``size`` bytes of unpadded base64url ``text`` (only 16-byte values are accepted by
    default); ValueError if it is anything else (padding, the standard alphabet, stray bits)."""
    if size == KID_BYTES:
        if not isinstance(text, str) or _B64URL_16.fullmatch(text) is None:
            raise ValueError("not 22 characters of base64url without padding (16 bytes)")
    elif not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if len(raw) != size:
        raise ValueError(f"decodes to {len(raw)} bytes, not {size}")
    return raw


def parse_request(body: bytes, *, max_bytes: int = MAX_REQUEST_BYTES, max_kids: int = MAX_KIDS) -> LicenceRequest:
    """The licence request in ``body``; raises BadRequest (or PayloadTooLarge past ``max_bytes``)."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"a licence request is at most {max_bytes} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest("the licence request is not JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("the licence request is not a JSON object")
    kids = doc.get("kids")
    if not isinstance(kids, list) or not kids:
        raise BadRequest('the licence request needs "kids": a non-empty array of KIDs')
    if len(kids) > max_kids:
        raise BadRequest(f"at most {max_kids} KIDs per licence request, got {len(kids)}")
    session_type = doc.get("type", "temporary")
    if session_type not in SESSION_TYPES:
        raise BadRequest(f'"type" must be one of {", ".join(SESSION_TYPES)}')
    seen: dict[bytes, None] = {}
    for i, text in enumerate(kids):
        try:
            seen.setdefault(unb64url(text), None)
        except ValueError as e:
            raise BadRequest(f"kids[{i}]: {e}") from None
    return LicenceRequest(kids=tuple(seen), type=session_type)


def build_response(keys: Iterable[tuple[bytes, bytes]], session_type: str) -> bytes:
    """The licence JSON for ``(kid, key)`` pairs (UTF-8 bytes, compact)."""
    if session_type not in SESSION_TYPES:
        raise ValueError(f"unknown session type {session_type!r}")
    entries = []
    for kid, key in keys:
        if len(kid) != KID_BYTES or len(key) != KID_BYTES:
            raise ValueError("a ClearKey KID and key are 16 bytes each")
        entries.append(f'{{"kty":"oct","kid":"{b64url(kid)}","k":"{b64url(key)}"}}')
    # Assembled as text: every value is base64url or one of SESSION_TYPES, none needing JSON
    # escapes, so these are the bytes json.dumps(..., separators=(",", ":")) writes, for a
    # fraction of its cost on the licence path.
    return f'{{"keys":[{",".join(entries)}],"type":"{session_type}"}}'.encode("ascii")
