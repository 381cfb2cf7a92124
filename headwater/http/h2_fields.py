"""HPACK header blocks for the HTTP/2 server, in fewer steps than the ``hpack`` library takes.

Responses: ``encode_field`` writes one field as a literal without indexing (RFC 7541 6.2.2)
whose name, when the static table has it, is that table's index, or as a static-table index when
the static table has the whole field (``:status: 200``); no Huffman coding. Nothing is inserted
in the dynamic table, so there is no encoder state to keep in step with the peer's decoder: a
field's bytes are the same on every connection and are remembered by the field (``FieldMemo``),
and the first block of a connection opens with a dynamic table size update to 0
(``TABLE_SIZE_ZERO``), so no later SETTINGS_HEADER_TABLE_SIZE from the peer needs answering.
hpack's encoder searched its dynamic table linearly for every field of every response and
Huffman-coded every string: the largest share of a small response's CPU.

Requests: ``RememberingDecoder`` is hpack's decoder that remembers a block it decoded without
changing the dynamic table (only indexes into it, literals not indexed) and answers the same
block with the same fields while the table stays as it was: a client sends the same block for
every request to the same target once its fields are in the table (h2load, players polling a
playlist). Any block that changes the table forgets all it remembered.
"""

from __future__ import annotations

import h2.errors
import h2.exceptions
import hpack
from hpack.exceptions import HPACKDecodingError, InvalidTableSizeError, OversizedHeaderListError
from hpack.table import HeaderTable, table_entry_size

__all__ = ["TABLE_SIZE_ZERO", "encode_field", "encode_status", "header_frames", "FieldMemo",
           "RememberingDecoder", "CompressionError"]

#: A dynamic table size update to 0 (RFC 7541 6.3): the first bytes of our first block.
TABLE_SIZE_ZERO = b"\x20"

# name -> its first static-table index; (name, value) -> its static-table index (1-based).
_STATIC_NAMES: dict[bytes, int] = {}
_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_NAMES.setdefault(_n, _i)
    if _v:
        _STATIC_FIELDS.setdefault((_n, _v), _i)

# Fields an intermediary must not index either (RFC 7541 7.1.3): literal never indexed.
_NEVER_INDEXED = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})

_HEADERS = 0x1
_CONTINUATION = 0x9
_END_STREAM = 0x1
_END_HEADERS = 0x4


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: ``value`` with an N-bit prefix, the first byte's other bits ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """RFC 7541 5.2: a string literal, not Huffman-coded."""
    return _integer(len(data), 7, 0) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One header field (``name`` lower case) as HPACK that leaves the dynamic table alone."""
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)  # indexed, static table
    first = 0x10 if name in _NEVER_INDEXED else 0x00
    index = _STATIC_NAMES.get(name)
    if index is not None:
        return _integer(index, 4, first) + _string(value)
    return bytes((first,)) + _string(name) + _string(value)


_STATUS: dict[int, bytes] = {}


def encode_status(status: int) -> bytes:
    """The ``:status`` field of ``status`` (remembered: a server answers with few)."""
    out = _STATUS.get(status)
    if out is None:
        out = encode_field(b":status", str(status).encode())
        if 100 <= status <= 999:
            _STATUS[status] = out
    return out


def header_frames(stream_id: int, block: bytes, *, end_stream: bool, max_frame: int) -> list[bytes]:
    """``block`` framed as HEADERS and, past ``max_frame`` bytes, CONTINUATION frames."""
    if len(block) <= max_frame:
        flags = _END_HEADERS | (_END_STREAM if end_stream else 0)
        return [_frame(_HEADERS, flags, stream_id, block)]
    out = []
    for start in range(0, len(block), max_frame):
        last = start + max_frame >= len(block)
        if start == 0:
            kind, flags = _HEADERS, (_END_STREAM if end_stream else 0)
        else:
            kind, flags = _CONTINUATION, 0
        out.append(_frame(kind, flags | (_END_HEADERS if last else 0), stream_id,
                          block[start:start + max_frame]))
    return out


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + stream_id.to_bytes(4, "big") + payload


class FieldMemo:
    """Response fields already checked and encoded, by the (name, value) the app gave: the same
    few fields go out on response after response (content type, cache fields, the Date of the
    second). Bounded: at most ``max_entries`` fields of at most ``max_field_chars`` characters,
    forgotten all at once when full. Entries are (the field's HPACK bytes, what it is:
    ``kind``, its content-length when it is one)."""

    PLAIN, HOP_BY_HOP, CONTENT_LENGTH, DATE, SERVER = range(5)

    __slots__ = ("entries", "max_entries", "max_field_chars")

    def __init__(self, max_entries: int = 2048, max_field_chars: int = 512) -> None:
        self.entries: dict[tuple[str, str], tuple[bytes, int, int]] = {}
        self.max_entries = max_entries
        self.max_field_chars = max_field_chars

    def remember(self, name: str, value: str, entry: tuple[bytes, int, int]) -> None:
        if len(name) + len(value) > self.max_field_chars:
            return
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[(name, value)] = entry


class CompressionError(h2.exceptions.ProtocolError):
    """A header block HPACK cannot decode: a connection error of type COMPRESSION_ERROR (RFC
    9113 4.3; h2 itself reports it as PROTOCOL_ERROR). h2 sends its GOAWAY with this code."""

    error_code = h2.errors.ErrorCodes.COMPRESSION_ERROR


class RememberingDecoder(hpack.Decoder):
    """hpack's ``Decoder`` that answers a block it decoded before, without changing the table
    since, with the fields it decoded then (see the module's docstring). Bounded per
    connection: at most ``MAX_BLOCKS`` blocks of at most ``MAX_BLOCK_BYTES`` bytes and
    ``MAX_FIELDS`` fields each; the limits (``max_header_list_size``, the table size the
    peer may use) are checked on every answer as a full decode checks them."""

    MAX_BLOCKS = 16
    MAX_BLOCK_BYTES = 512
    MAX_FIELDS = 32

    def __init__(self, max_header_list_size: int = hpack.hpack.DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        super().__init__(max_header_list_size)
        # block -> [its fields, their HPACK size, what the connection made of them or None]
        self._blocks: dict[bytes, list] = {}

    def remembered(self, data: bytes) -> list | None:
        """The entry of a block ``decode`` would answer from memory now, within the limits it
        checks: [its fields, their size, the note the caller left on it (None at first)], or
        None (``decode`` then decodes it, or raises). The note goes when the block is
        forgotten: a connection keeps what it worked out from a block's fields there, valid for
        as long as the block reads as those fields."""
        known = self._blocks.get(data)
        if (known is None or known[1] > self.max_header_list_size
                or self.header_table.maxsize > self.max_allowed_table_size):
            return None
        return known

    def decode(self, data: bytes, raw: bool = False) -> list:  # type: ignore[override]
        if not raw:  # (h2 asks for raw fields; anything else is hpack's own business)
            return super().decode(data, raw)
        known = self._blocks.get(data)
        if known is not None:
            fields, size, _ = known
            if size > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received")
            if self.header_table.maxsize > self.max_allowed_table_size:
                raise CompressionError("Decoder's table size exceeds the maximum allowed")
            return list(fields)
        table = self.header_table
        entries = table.dynamic_entries
        first = entries[0] if entries else None
        count, maxsize = len(entries), table.maxsize
        try:
            fields = super().decode(data, raw)
        except OversizedHeaderListError:
            raise  # (h2 makes it a denial of service: ENHANCE_YOUR_CALM)
        except (HPACKDecodingError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise CompressionError(f"Error decoding header block: {e}") from e
        if (entries[0] if entries else None) is not first or len(entries) != count or table.maxsize != maxsize:
            self._blocks.clear()  # the table changed: what was remembered may now read otherwise
        elif len(data) <= self.MAX_BLOCK_BYTES and len(fields) <= self.MAX_FIELDS:
            if len(self._blocks) >= self.MAX_BLOCKS:
                self._blocks.clear()
            size = sum(table_entry_size(n, v) for n, v in fields)
            self._blocks[bytes(data)] = [fields, size, None]
            fields = list(fields)
        return fields
