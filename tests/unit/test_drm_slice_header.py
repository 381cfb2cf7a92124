"""Slice-header lengths from hand-built H.264 parameter sets and slices, emulation prevention
included, and hostile input. (Shaka Packager agreement on real x264/x265 streams is in
tests/functional/test_drm_crypto_shaka.py.)"""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.drm.bmff.protection import Subsample
from headwater.drm.errors import MalformedMedia, UnsupportedMedia
from headwater.drm.package.nal import subsamples_for
from headwater.drm.package.rbsp import BitReader, header_bytes, unescape
from headwater.drm.package.slice_header import SliceHeaderReader, parameter_sets_of


class Bits:
    def __init__(self):
        self.bits = []

    def u(self, k, v):
        self.bits += [(v >> (k - 1 - i)) & 1 for i in range(k)]
        return self

    def ue(self, v):
        n = (v + 1).bit_length()
        return self.u(n - 1, 0).u(n, v + 1)

    def se(self, v):
        return self.ue(2 * v - 1 if v > 0 else -2 * v)

    def rbsp(self, trailing=True):
        bits = self.bits + ([1] if trailing else [])
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))


def escape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def sps(log2_frame_num=4, log2_poc=4):
    b = Bits().u(8, 66).u(16, 30).ue(0).ue(log2_frame_num - 4).ue(0).ue(log2_poc - 4)
    b.ue(1).u(1, 0).ue(19).ue(14).u(1, 1).u(1, 1).u(1, 0).u(1, 0)
    return b"\x67" + escape(b.rbsp())


def pps(deblocking=1, weighted=0, cabac=0):
    b = Bits().ue(0).ue(0).u(1, cabac).u(1, 0).ue(0).ue(0).ue(0).u(1, weighted).u(2, 0)
    b.se(0).se(0).se(0).u(1, deblocking).u(1, 0).u(1, 0)
    return b"\x68" + escape(b.rbsp())


def reader(*nals):
    r = SliceHeaderReader("avc")
    for n in nals:
        r.observe(n)
    return r


def test_idr_i_slice_header_is_three_bytes():
    head = Bits().ue(0).ue(7).ue(0).u(4, 0).ue(0).u(4, 0).u(2, 0).se(0).ue(1)   # 24 bits
    nal = b"\x65" + escape(head.rbsp(trailing=False) + b"\xAA" * 40)
    assert reader(sps(), pps()).header_size(nal) == 3
    sample = len(nal).to_bytes(4, "big") + nal
    r = reader(sps(), pps())
    assert subsamples_for(sample, 4, "avc", "cbcs", r) == (Subsample(4 + 1 + 3, 40),)
    assert subsamples_for(sample, 4, "avc", "cenc", r) == (Subsample(8, 32), Subsample(8, 0))


def test_emulation_prevention_bytes_in_the_header_are_counted():
    # non-IDR I slice, nal_ref_idc 0: frame_num (16 bits) 0, poc_lsb (16 bits) 1: the zero run
    # forces a 0x03 into the stored header.
    head = Bits().ue(0).ue(2).ue(0).u(16, 0).u(16, 1).se(0).ue(1)               # 41 bits
    rbsp = head.rbsp(trailing=False)[:-1] + bytes([head.rbsp(trailing=False)[-1] | 0x40])
    nal = b"\x01" + escape(rbsp + b"\x55" * 20)
    assert nal[1:5] == b"\xb8\x00\x00\x03"
    assert reader(sps(16, 16), pps()).header_size(nal) == 6 + 1


def test_p_slice_with_weights_and_modifications():
    r = reader(sps(), pps(weighted=1))
    # Baseline 4:2:0 has ChromaArrayType 1: chroma_log2 and chroma flags are present.
    head = (Bits().ue(0).ue(5).ue(0).u(4, 3).u(4, 6)     # P, frame_num, poc
            .u(1, 1).ue(1)                                # override: 2 refs in l0
            .u(1, 1).ue(0).ue(2).ue(1).ue(5).ue(3)        # list modification, then end
            .ue(5).ue(2)                                  # pred weight table denominators
            .u(1, 1).se(-3).se(7).u(1, 1).se(1).se(2).se(3).se(4)
            .u(1, 0).u(1, 0)
            .u(1, 1).ue(1).ue(0).ue(0)                    # adaptive marking: op 1, then end
            .se(-2).ue(0).se(1).se(-1))
    bits = len(head.bits)
    nal = b"\x41" + escape(head.rbsp(trailing=False) + b"\xF0" * 30)
    assert r.header_size(nal) == -(-bits // 8)


def test_in_band_parameter_sets_replace_earlier_ones():
    r = SliceHeaderReader("avc", b"\x01\x42\x00\x1e\xff\xe1" + len(sps()).to_bytes(2, "big") + sps()
                          + b"\x01" + len(pps()).to_bytes(2, "big") + pps())
    head = Bits().ue(0).ue(7).ue(0).u(4, 0).ue(0).u(4, 0).u(2, 0).se(0).ue(1)
    idr = b"\x65" + escape(head.rbsp(trailing=False) + b"\xAA" * 40)
    assert r.header_size(idr) == 3
    # A new SPS with 16-bit frame_num in band: the same bits now read differently.
    wide = Bits().ue(0).ue(7).ue(0).u(16, 0).ue(0).u(4, 0).u(2, 0).se(0).ue(1)
    idr2 = b"\x65" + escape(wide.rbsp(trailing=False) + b"\xAA" * 40)
    sample = b"".join(len(n).to_bytes(4, "big") + n for n in (sps(16), idr2))
    subs = subsamples_for(sample, 4, "avc", "cbcs", r)
    assert subs == (Subsample(4 + len(sps(16)) + 4 + 1 + r.header_size(idr2), 40),)
    assert r.header_size(idr2) == -(-len(wide.bits) // 8)
    assert parameter_sets_of(b"\x01\x42\x00\x1e\xff\xe1\x00\x02\x67\x42\x00", "avc") == [b"\x67\x42"]


def test_hostile_slices_and_parameter_sets():
    with pytest.raises(MalformedMedia, match="never seen"):
        reader().header_size(b"\x65\x88\x84\x00")
    with pytest.raises(MalformedMedia):                       # header runs past the NAL
        reader(sps(), pps()).header_size(b"\x65\x88")
    with pytest.raises(MalformedMedia):                       # truncated SPS
        reader(sps()[:3])
    with pytest.raises(MalformedMedia):                       # 40 leading zero bits
        reader(sps(), pps()).header_size(b"\x65" + bytes(5) + b"\x01" * 10)
    fmo = b"\x68" + Bits().ue(0).ue(0).u(1, 0).u(1, 0).ue(1).rbsp()
    with pytest.raises(UnsupportedMedia):
        reader(fmo)
    with pytest.raises(MalformedMedia):
        parameter_sets_of(b"\x01\x42\x00\x1e\xff\xe1\x00\x50\x67", "avc")
    with pytest.raises(MalformedMedia):                       # HEVC slice, no parameter sets
        SliceHeaderReader("hevc").header_size(bytes([19 << 1, 1, 0x80, 0x00]))
    with pytest.raises(UnsupportedMedia):
        SliceHeaderReader("vp9")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.sampled_from([0x65, 0x41, 0x01, 0x21]))
def test_random_slices_fail_cleanly(body, first):
    r = reader(sps(), pps(weighted=1, cabac=1))
    try:
        n = r.header_size(bytes([first]) + body)
    except (MalformedMedia, UnsupportedMedia):
        return
    assert 0 <= n <= len(body)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=120), st.sampled_from(["avc", "hevc"]),
       st.sampled_from([0x67, 0x68, 33 << 1, 34 << 1]))
def test_random_parameter_sets_fail_cleanly(body, codec, first):
    r = SliceHeaderReader(codec)
    try:
        r.observe(bytes([first, 1]) + body)
    except (MalformedMedia, UnsupportedMedia):
        pass


def test_hostile_slice_costs_little():
    # 1 MiB of 1 bits: a P slice whose reference-list modification would never end.
    r = reader(sps(), pps())
    t = time.perf_counter()
    with pytest.raises(MalformedMedia):
        r.header_size(b"\x41" + b"\xff" * (1 << 20))
    assert time.perf_counter() - t < 0.5


def test_rbsp_unescape_and_header_limit():
    rbsp, removed = unescape(b"\x00\x00\x03\x01\xaa\x00\x00\x03\x00\x00\x03")
    assert rbsp == b"\x00\x00\x01\xaa\x00\x00\x00\x00" and removed == [2, 6, 8]

    def forever(bits):
        while True:
            bits.u(7)

    with pytest.raises(MalformedMedia, match="longer than 1000"):
        header_bytes(memoryview(b"\xff" * 200_000), forever, 1000)
    with pytest.raises(MalformedMedia, match="runs past"):
        header_bytes(memoryview(b"\xff" * 700), forever, 1000)
    b = BitReader(b"\x40\x01")               # ue 1 ('010'), then 12 zeros and a 1
    assert (b.ue(), b.u(13)) == (1, 1)
