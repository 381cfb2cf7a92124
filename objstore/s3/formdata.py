"""A streaming multipart/form-data reader (RFC 7578), sans-IO, for S3's POST Object.

Feed it the body as it arrives (``feed``), then ``finish``; it answers events: ``PartStarted``
(the part's name, filename and Content-Type), ``PartData`` (its bytes, in order) and
``PartEnded``. The file of a browser upload can be gigabytes: the reader holds back only the
bytes that might begin the next boundary, never a whole part. A body that is not well-formed
form data raises MalformedPOSTRequest, as S3 answers.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass

from .errors import MalformedPOSTRequest

__all__ = ["FormReader", "PartStarted", "PartData", "PartEnded", "FormEvent", "boundary_of"]

#: A part's header section is a few lines; anything much longer is not a browser's form.
MAX_PART_HEADER_BYTES = 8 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PartStarted:
    name: str
    filename: str | None
    content_type: str | None
    #: The body's bytes before this part's content (preamble, boundaries, headers, other parts):
    #: what S3 holds to 20 KB before the file, however many parts they make.
    offset: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PartEnded:
    pass


FormEvent = PartStarted | PartData | PartEnded

_BOUNDARY = re.compile(r'''boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;,"]{1,70}))''', re.IGNORECASE)
# A Content-Disposition parameter: name=value or name="quoted value" (browsers write a '"' in a
# name or filename as %22 and a line break as %0D%0A, so no backslash escapes to undo).
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"([^"]*)"|([^\s;]*))')


def boundary_of(content_type: str | None) -> str | None:
    """The boundary of a ``multipart/form-data`` Content-Type; None for any other type."""
    if content_type is None or not content_type.strip().lower().startswith("multipart/form-data"):
        return None
    m = _BOUNDARY.search(content_type)
    return (m.group(1) or m.group(2)) if m else None


class _State(enum.Enum):
    PREAMBLE = "preamble"        # before the first boundary
    AFTER_BOUNDARY = "after"     # a boundary just ended: "--" (the end) or CRLF (a part)
    HEADERS = "headers"          # a part's header section, up to the empty line
    CONTENT = "content"          # a part's bytes, up to the next boundary
    EPILOGUE = "epilogue"        # after the closing boundary: ignored


class FormReader:
    """Turns a multipart/form-data body into part events, as it streams."""

    def __init__(self, boundary: str) -> None:
        # Each boundary but the first follows a CRLF that belongs to it, not to the part before;
        # a CRLF in front of the body lets the first one be found the same way.
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = bytearray(b"\r\n")
        self._state = _State.PREAMBLE
        self.parts = 0
        self._fed = 0  # the body's bytes fed so far

    @property
    def consumed(self) -> int:
        """The body's bytes read past: fed, and not held back as a possible boundary or header
        (0 while the CRLF put in front of the body is still held)."""
        return max(0, self._fed - len(self._buffer))

    def feed(self, data: bytes) -> list[FormEvent]:
        """The events the body's next bytes complete."""
        self._buffer += data
        self._fed += len(data)
        events: list[FormEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> None:
        """The body has ended: it must have ended with the closing boundary."""
        if self._state is not _State.EPILOGUE:
            raise MalformedPOSTRequest()

    def _step(self, events: list[FormEvent]) -> bool:
        """Advance by one piece of syntax; False when more bytes are needed."""
        buf, delim = self._buffer, self._delimiter
        if self._state is _State.PREAMBLE:
            at = buf.find(delim)
            if at < 0:
                # keep what could still be the start of the boundary
                del buf[:max(0, len(buf) - len(delim) + 1)]
                return False
            del buf[:at + len(delim)]
            self._state = _State.AFTER_BOUNDARY
            return True
        if self._state is _State.AFTER_BOUNDARY:
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = _State.EPILOGUE
                return True
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 256:
                    raise MalformedPOSTRequest()
                return False
            if buf[:end].strip(b" \t"):  # only transport padding may follow a boundary
                raise MalformedPOSTRequest()
            del buf[:end + 2]
            self._state = _State.HEADERS
            return True
        if self._state is _State.HEADERS:
            end = buf.find(b"\r\n\r\n")
            # found or not: one feed of many KB can bring a long header section whole
            if end > MAX_PART_HEADER_BYTES or (end < 0 and len(buf) > MAX_PART_HEADER_BYTES):
                raise MalformedPOSTRequest()
            if end < 0:
                return False
            started = self._part_started(bytes(buf[:end]))
            del buf[:end + 4]
            events.append(dataclasses.replace(started, offset=self.consumed))
            self._state = _State.CONTENT
            return True
        if self._state is _State.CONTENT:
            at = buf.find(delim)
            if at < 0:
                keep = len(delim) - 1
                if len(buf) > keep:
                    events.append(PartData(data=bytes(buf[:len(buf) - keep])))
                    del buf[:len(buf) - keep]
                return False
            if at:
                events.append(PartData(data=bytes(buf[:at])))
            events.append(PartEnded())
            del buf[:at + len(delim)]
            self._state = _State.AFTER_BOUNDARY
            return True
        buf.clear()  # the epilogue
        return False

    def _part_started(self, raw: bytes) -> PartStarted:
        disposition = content_type = None
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                raise MalformedPOSTRequest()
            field = name.strip().lower()
            # UTF-8 is what browsers send for a filename; a byte that is not is kept as latin-1
            try:
                decoded = value.strip().decode("utf-8")
            except UnicodeDecodeError:
                decoded = value.strip().decode("latin-1")
            if field == b"content-disposition":
                disposition = decoded
            elif field == b"content-type":
                content_type = decoded
        if disposition is None or not disposition.lower().startswith("form-data"):
            raise MalformedPOSTRequest()
        params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                  for m in _PARAM.finditer(disposition)}
        if "name" not in params:
            raise MalformedPOSTRequest()
        self.parts += 1
        return PartStarted(name=params["name"], filename=params.get("filename"), content_type=content_type)
