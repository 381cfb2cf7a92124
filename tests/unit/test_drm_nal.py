"""NAL units of length-prefixed samples and the clear/protected map per scheme."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.drm.bmff.protection import MAX_CLEAR, Subsample
from headwater.drm.errors import MalformedMedia, UnsupportedMedia
from headwater.drm.package.nal import (
    NAL_HEADER_SIZE, merge_ranges, nal_length_size_of, split_nal_units, subsamples_for,
)


def nal(body: bytes, n: int = 4) -> bytes:
    return len(body).to_bytes(n, "big") + body


SPS = bytes([0x67]) + b"\x64\x00\x1f" + b"s" * 20
PPS = bytes([0x68]) + b"p" * 5
IDR = bytes([0x65]) + bytes(range(256)) * 3          # 769 bytes
HEVC_IDR = bytes([19 << 1, 1]) + b"h" * 200           # IDR_W_RADL
HEVC_VPS = bytes([32 << 1, 1]) + b"v" * 20


def test_split_finds_units_and_types():
    sample = nal(SPS) + nal(PPS) + nal(IDR)
    units = split_nal_units(sample, 4, "avc")
    assert [(u.start, u.size, u.nal_type, u.vcl) for u in units] == [
        (0, len(SPS), 7, False), (4 + len(SPS), len(PPS), 8, False),
        (8 + len(SPS) + len(PPS), len(IDR), 5, True)]
    hevc = split_nal_units(nal(HEVC_VPS, 2) + nal(HEVC_IDR, 2), 2, "hevc")
    assert [(u.nal_type, u.vcl) for u in hevc] == [(32, False), (19, True)]


@pytest.mark.parametrize("sample", [
    nal(IDR)[:-1],                         # length one past the end
    b"\x00\x00\x01",                       # prefix cut short
    nal(IDR) + b"\x00\x00",                # a trailing partial prefix
    b"\xff\xff\xff\xff" + b"x" * 10,       # absurd length
])
def test_lengths_past_the_sample_are_malformed(sample):
    with pytest.raises(MalformedMedia):
        split_nal_units(sample, 4, "avc")


def test_bad_parameters_refused():
    with pytest.raises(UnsupportedMedia):
        split_nal_units(nal(IDR), 3, "avc")
    with pytest.raises(UnsupportedMedia):
        subsamples_for(nal(IDR), 4, "vp9", "cenc")
    with pytest.raises(UnsupportedMedia):
        subsamples_for(nal(IDR), 4, "avc", "cens")


def test_cenc_aligns_protected_bytes_leftover_clear_at_the_end():
    sample = nal(SPS) + nal(PPS) + nal(IDR)
    subs = subsamples_for(sample, 4, "avc", "cenc")
    # 768 bytes after the 1-byte header: all 48 blocks protected; everything before is clear.
    assert subs == (Subsample(4 + len(SPS) + 4 + len(PPS) + 4 + 1, 768),)
    odd = nal(bytes([0x41]) + b"z" * 100)          # 100 bytes after the header: 96 protected
    # (the 4 bytes over a multiple of 16 stay clear after it, so protection starts at the data)
    assert subsamples_for(odd, 4, "avc", "cenc") == (Subsample(4 + 1, 96), Subsample(4, 0))


def test_cbcs_protects_from_after_the_header_to_the_end():
    odd = nal(bytes([0x41]) + b"z" * 100)
    assert subsamples_for(odd, 4, "avc", "cbcs") == (Subsample(5, 100),)
    hevc = nal(HEVC_VPS, 1) + nal(HEVC_IDR, 1)
    assert subsamples_for(hevc, 1, "hevc", "cbcs") == (Subsample(1 + len(HEVC_VPS) + 1 + 2, 200),)


def test_trailing_non_vcl_and_tiny_slices_are_clear():
    tiny = bytes([0x41]) + b"t" * 10                # under one block after the header
    sample = nal(IDR) + nal(tiny) + nal(SPS)
    subs = subsamples_for(sample, 4, "avc", "cenc")
    assert subs == (Subsample(5, 768), Subsample(4 + len(tiny) + 4 + len(SPS), 0))
    two = subsamples_for(nal(bytes([0x41]) + b"a" * 20) + nal(IDR), 4, "avc", "cenc")
    assert two == (Subsample(5, 16), Subsample(4 + 4 + 1, 768))
    assert subsamples_for(nal(b""), 4, "avc", "cenc") == (Subsample(4, 0),)


def test_long_clear_runs_are_split():
    assert merge_ranges([(MAX_CLEAR + 10, 0), (3, 32)]) == (
        Subsample(MAX_CLEAR, 0), Subsample(13, 32))
    assert merge_ranges([(2 * MAX_CLEAR + 1, 0)]) == (
        Subsample(MAX_CLEAR, 0), Subsample(MAX_CLEAR, 0), Subsample(1, 0))
    big_sei = bytes([0x06]) + b"e" * (MAX_CLEAR + 100)
    subs = subsamples_for(nal(big_sei) + nal(IDR), 4, "avc", "cenc")
    assert subs[0] == Subsample(MAX_CLEAR, 0) and sum(s.clear + s.protected for s in subs) == \
        4 + len(big_sei) + 4 + len(IDR)


def test_nal_length_size_from_config():
    avcc = bytes([1, 0x64, 0, 0x1f, 0xFC | 3]) + b"\xe1"
    assert nal_length_size_of(avcc, "avc") == 4
    hvcc = bytes(21) + bytes([0xF0 | 1])
    assert nal_length_size_of(hvcc, "hevc") == 2
    with pytest.raises(MalformedMedia):
        nal_length_size_of(b"\x01\x64", "avc")
    with pytest.raises(MalformedMedia):
        nal_length_size_of(bytes([1, 0, 0, 0, 0xFE]), "avc")   # size 3


@st.composite
def samples(draw):
    codec = draw(st.sampled_from(["avc", "hevc"]))
    n = draw(st.sampled_from([1, 2, 4]))
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        vcl = draw(st.booleans())
        if codec == "avc":
            first = bytes([draw(st.sampled_from([1, 5])) if vcl else draw(st.sampled_from([6, 7, 8, 9]))])
        else:
            first = bytes([(draw(st.integers(0, 21)) if vcl else draw(st.integers(32, 40))) << 1, 1])
        body = first + draw(st.binary(max_size=min(300, (1 << (8 * n)) - 1 - len(first))))
        out += nal(body, n)
    return codec, n, out


@settings(max_examples=150, deadline=None)
@given(samples(), st.sampled_from(["cenc", "cbcs"]))
def test_map_covers_the_sample_and_protects_only_slice_payloads(case, scheme):
    codec, n, sample = case
    subs = subsamples_for(sample, n, codec, scheme)
    assert sum(s.clear + s.protected for s in subs) == len(sample)
    assert all(s.clear <= MAX_CLEAR for s in subs)
    allowed = set()
    for u in split_nal_units(sample, n, codec):
        if u.vcl:
            allowed.update(range(u.start + n + NAL_HEADER_SIZE[codec], u.start + n + u.size))
    at = 0
    for s in subs:
        at += s.clear
        assert set(range(at, at + s.protected)) <= allowed
        if scheme == "cenc":
            assert s.protected % 16 == 0
        at += s.protected
