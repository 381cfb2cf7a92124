"""The box framing: headers of every size form, bounds, and hostile sizes."""

import io
import struct

import pytest

from headwater.drm.bmff.box import (
    ByteReader, box, find_path, full_box, iter_boxes, parse_header, scan_top_level,
)
from headwater.drm.errors import MalformedMedia


def test_nested_boxes_round_trip():
    mdhd = full_box(b"mdhd", 0, 0, b"\x00" * 20)
    moov = box(b"moov", box(b"trak", box(b"mdia", mdhd)), box(b"udta"))
    h = find_path(moov, [b"moov", b"trak", b"mdia", b"mdhd"])
    assert h is not None and h.size == len(mdhd)
    r = ByteReader.of(moov, h)
    assert r.full_header() == (0, 0)
    assert r.remaining == 20
    assert [c.type for c in iter_boxes(moov, 8)] == [b"trak", b"udta"]


def test_largesize_uuid_and_size_zero():
    big = struct.pack(">I4sQ", 1, b"free", 16 + 3) + b"abc"
    assert parse_header(big, 0).header_size == 16 and parse_header(big, 0).size == 19
    u = box(b"uuid", b"U" * 16, b"payload")
    h = parse_header(u, 0)
    assert h.usertype == b"U" * 16 and bytes(h.payload(u)) == b"payload"
    tail = struct.pack(">I4s", 0, b"mdat") + b"x" * 10
    assert parse_header(tail, 0).size == 18


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00",                                    # shorter than a header
    struct.pack(">I4s", 4, b"free"),                    # size below its own header
    struct.pack(">I4s", 100, b"free") + b"x" * 10,      # runs past the buffer
    struct.pack(">I4s", 1, b"free") + b"\x00" * 4,      # truncated largesize
    struct.pack(">I4sQ", 1, b"free", 2**63),            # absurd largesize
    struct.pack(">I4s", 12, b"uuid") + b"x" * 4,        # uuid without its usertype
])
def test_hostile_headers_are_malformed(data):
    with pytest.raises(MalformedMedia):
        list(iter_boxes(data))


def test_child_cannot_run_past_its_parent():
    parent = box(b"moov", struct.pack(">I4s", 64, b"trak"))
    with pytest.raises(MalformedMedia):
        list(iter_boxes(parent, 8))


def test_reader_refuses_fields_and_counts_past_the_end():
    r = ByteReader(b"\x00\x00\x00\x05abc", what="stsz")
    assert r.u32() == 5
    with pytest.raises(MalformedMedia, match="stsz"):
        r.count(5, 4)
    with pytest.raises(MalformedMedia):
        r.u32()


def test_scan_top_level_reads_headers_only():
    data = box(b"ftyp", b"isom") + box(b"mdat", b"\x00" * 100000) + box(b"moov", b"")
    f = io.BytesIO(data)
    types = [(h.type, h.size) for h in scan_top_level(f, len(data))]
    assert types == [(b"ftyp", 12), (b"mdat", 100008), (b"moov", 8)]
    with pytest.raises(MalformedMedia):
        list(scan_top_level(io.BytesIO(data[:-3]), len(data) - 3))
