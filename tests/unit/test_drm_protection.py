"""Protection boxes: writers and parsers agree, parsers are bounded, sample entries convert."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.drm.bmff.box import box, find_box, full_box, iter_boxes, parse_header
from headwater.drm.bmff.protection import (
    COMMON_SYSTEM_ID, Pssh, SampleAux, Subsample, Tenc, aux_boxes, parse_pssh, parse_saio,
    parse_saiz, parse_senc, parse_sinf, parse_tenc, protect_sample_entry, pssh_box, saiz_box,
    senc_box, sinf_box, tenc_box,
)
from headwater.drm.errors import MalformedMedia, UnsupportedMedia

KID = bytes(range(16))


def _h(b: bytes):
    return parse_header(b, 0)


@pytest.mark.parametrize("t", [
    Tenc(0, 1, 8, KID),
    Tenc(0, 1, 16, KID),
    Tenc(1, 1, 0, KID, 1, 9, b"I" * 16),
    Tenc(1, 1, 0, KID, 0, 0, b"J" * 8),
])
def test_tenc_and_sinf_round_trip(t):
    b = tenc_box(t)
    assert parse_tenc(b, _h(b)) == t
    s = sinf_box(b"hvc1", "cbcs" if t.per_sample_iv_size == 0 else "cenc", t)
    info = parse_sinf(s, _h(s))
    assert info.tenc == t and info.original_format == b"hvc1" and info.scheme_version == 0x10000


def test_tenc_v0_layout_is_exact():
    # 4 full-box bytes, 2 reserved, isProtected, IV size, KID.
    assert tenc_box(Tenc(0, 1, 8, KID))[8:] == bytes(6) + b"\x01\x08" + KID
    assert tenc_box(Tenc(1, 1, 0, KID, 1, 9, b"I" * 16))[8:] == \
        b"\x01\x00\x00\x00\x00\x19\x01\x00" + KID + b"\x10" + b"I" * 16


def test_tenc_refuses_bad_sizes():
    bad = full_box(b"tenc", 0, 0, b"\x00\x00\x01\x07" + KID)
    with pytest.raises(MalformedMedia):
        parse_tenc(bad, _h(bad))
    truncated = tenc_box(Tenc(1, 1, 0, KID, 1, 9, b"I" * 16))[:-3]
    truncated = struct.pack(">I", len(truncated)) + truncated[4:]
    with pytest.raises(MalformedMedia):
        parse_tenc(truncated, _h(truncated))
    with pytest.raises(MalformedMedia):
        parse_sinf(box(b"sinf", box(b"frma", b"avc1")), _h(box(b"sinf", box(b"frma", b"avc1"))))


def test_pssh_v0_v1_and_hostile_counts():
    v1 = pssh_box(Pssh(COMMON_SYSTEM_ID, (KID, KID[::-1]), b""))
    assert v1.hex().startswith("0000004470737368010000001077efecc0b24d02ace33c1e52e2fb4b00000002")
    assert parse_pssh(v1, _h(v1)) == Pssh(COMMON_SYSTEM_ID, (KID, KID[::-1]), b"", 1)
    v0 = pssh_box(Pssh(b"\xed\xef\x8b\xa9" + bytes(12), (), b"\x08\x01\x12\x10" + KID, 0))
    assert parse_pssh(v0, _h(v0)).data == b"\x08\x01\x12\x10" + KID
    with pytest.raises(ValueError):
        pssh_box(Pssh(COMMON_SYSTEM_ID, (KID,), b"", 0))
    liar = full_box(b"pssh", 1, 0, COMMON_SYSTEM_ID, struct.pack(">I", 2**32 - 1), KID)
    with pytest.raises(MalformedMedia):
        parse_pssh(liar, _h(liar))
    liar = full_box(b"pssh", 0, 0, COMMON_SYSTEM_ID, struct.pack(">I", 1000), b"x")
    with pytest.raises(MalformedMedia):
        parse_pssh(liar, _h(liar))


aux_strategy = st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1)).map(
    lambda t: Subsample(*t)), max_size=5).map(tuple)


@settings(max_examples=60, deadline=None)
@given(st.lists(aux_strategy, min_size=1, max_size=8), st.sampled_from([0, 8, 16]),
       st.integers(0, 5000))
def test_aux_boxes_round_trip_and_saio_points_at_the_first_entry(tables, iv_size, at):
    scheme = "cbcs" if iv_size == 0 else "cenc"
    aux = [SampleAux(bytes([i]) * (iv_size or 16), t) for i, t in enumerate(tables)]
    out = aux_boxes(aux, scheme, at)
    if iv_size == 0 and not any(tables):
        assert [h.type for h in iter_boxes(out)] == [b"senc"]
        assert out == senc_box(aux, 0)
        return
    saiz_h, saio_h, senc_h = iter_boxes(out)
    assert (saiz_h.type, saio_h.type, senc_h.type) == (b"saiz", b"saio", b"senc")
    constant = aux[0].iv if iv_size == 0 else b""
    senc = parse_senc(out, senc_h, iv_size, constant)
    with_subs = any(tables)
    assert senc.flags == (2 if with_subs else 0)
    assert [s.subsamples for s in senc.samples] == list(tables)
    if iv_size:
        assert [s.iv for s in senc.samples] == [a.iv for a in aux]
    sizes = parse_saiz(out, saiz_h).sizes
    assert sizes == tuple(iv_size + (2 + 6 * len(t) if with_subs else 0) for t in tables)
    (offset,) = parse_saio(out, saio_h).offsets
    first = offset - at
    assert first == senc_h.offset + 16
    # Walking the sizes from the saio offset lands exactly on the senc's end.
    assert first + sum(sizes) == senc_h.end


def test_senc_and_saiz_hostile():
    liar = full_box(b"senc", 0, 2, struct.pack(">I", 10**9))
    with pytest.raises(MalformedMedia):
        parse_senc(liar, _h(liar), 8)
    liar = full_box(b"senc", 0, 2, struct.pack(">I", 1), bytes(8), struct.pack(">H", 500))
    with pytest.raises(MalformedMedia):
        parse_senc(liar, _h(liar), 8)
    extra = senc_box([SampleAux(bytes(8))], 8) + b"junk"
    extra = struct.pack(">I", len(extra)) + extra[4:]
    with pytest.raises(MalformedMedia):
        parse_senc(extra, _h(extra), 8)
    liar = full_box(b"saiz", 0, 0, struct.pack(">BI", 0, 1000), b"\x08")
    with pytest.raises(MalformedMedia):
        parse_saiz(liar, _h(liar))
    with pytest.raises(UnsupportedMedia):
        saiz_box([256])
    s = saiz_box([10, 16, 10])
    assert parse_saiz(s, _h(s)).sizes == (10, 16, 10)


def _visual(btype=b"avc1") -> bytes:
    return box(btype, bytes(6), b"\x00\x01", bytes(70), box(b"avcC", b"\x01\x64\x00\x1f\xff"),
               box(b"pasp", bytes(8)))


def _audio(version=0) -> bytes:
    return box(b"mp4a", bytes(6), b"\x00\x01", struct.pack(">H", version), bytes(18),
               box(b"esds", bytes(30)))


@pytest.mark.parametrize("entry,fields,new", [
    (_visual(), 78, b"encv"), (_visual(b"hev1"), 78, b"encv"), (_audio(), 28, b"enca")])
def test_protect_sample_entry(entry, fields, new):
    t = Tenc(0, 1, 8, KID)
    out = protect_sample_entry(entry, "cenc", t)
    h = _h(out)
    assert h.type == new and h.size == len(out) == len(entry) + len(sinf_box(entry[4:8], "cenc", t))
    assert out[8:len(entry)] == entry[8:]             # fields and children unchanged
    kids = [c.type for c in iter_boxes(out, 8 + fields)]
    assert kids[-1] == b"sinf"
    assert parse_sinf(out, find_box(out, b"sinf", 8 + fields)).original_format == entry[4:8]


def test_protect_sample_entry_refuses():
    t = Tenc(0, 1, 8, KID)
    for bad in (_audio(1), _audio(2), box(b"av01", bytes(78)), box(b"avc1", bytes(40))):
        with pytest.raises((UnsupportedMedia, MalformedMedia)):
            protect_sample_entry(bad, "cenc", t)
    done = protect_sample_entry(_visual(), "cenc", t)
    with pytest.raises(UnsupportedMedia):
        protect_sample_entry(box(b"avc1", done[8:]), "cenc", t)
    with pytest.raises(MalformedMedia):       # children that do not frame
        protect_sample_entry(box(b"avc1", bytes(78), b"\x00\x00\x00\x50abcd"), "cenc", t)
