"""VP9 subsample maths (drm/package/vp9.py): uncompressed headers written bit by bit here from
the VP9 spec's syntax (§6.2) with hypothesis choosing every optional field, superframes and
their index, the block alignment of protected ranges, encryption that leaves headers clear in
cenc and cbcs, the vp09/Opus sample entries, and hostile bytes refused with MalformedMedia."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.drm.bmff.box import box, full_box
from headwater.drm.bmff.codecs import read_sample_entry
from headwater.drm.bmff.protection import Subsample
from headwater.drm.errors import MalformedMedia, UnsupportedMedia
from headwater.drm.package.encrypt import SampleEncryptor, TrackProtector
from headwater.drm.package.vp9 import Vp9Frame, Vp9HeaderReader, split_superframe, vp9_subsamples

KEY = bytes(range(16))


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def f(self, n: int, value: int) -> None:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]

    def bytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))


@dataclass
class Header:
    """The choices of one frame's uncompressed header."""

    kind: str = "key"                       # key | inter | intra_only
    profile: int = 0
    error_resilient: int = 0
    width: int = 320
    height: int = 180
    found_ref: int = -1                     # inter: the first found_ref set (-1: none, size coded)
    refresh: int = 1
    lf_deltas: list[int | None] = field(default_factory=list)   # six optional deltas
    deltas_q: list[int | None] = field(default_factory=lambda: [None] * 3)
    segmentation: bool = False
    tile_col_bits: int = 0
    tile_rows: int = 0


def write_header(h: Header) -> tuple[bytes, int]:
    """The header's bytes (to the byte boundary) and its length."""
    w = BitWriter()
    w.f(2, 2)
    w.f(1, h.profile & 1)
    w.f(1, h.profile >> 1)
    if h.profile == 3:
        w.f(1, 0)
    w.f(1, 0)                                   # show_existing_frame
    w.f(1, 0 if h.kind == "key" else 1)
    show = 0 if h.kind == "intra_only" else 1
    w.f(1, show)
    w.f(1, h.error_resilient)

    def color() -> None:
        if h.profile >= 2:
            w.f(1, 0)
        w.f(3, 2)                               # BT.709
        w.f(1, 0)
        if h.profile in (1, 3):
            w.f(3, 0b100)

    def size() -> None:
        w.f(16, h.width - 1)
        w.f(16, h.height - 1)
        w.f(1, 0)                               # render size same

    if h.kind == "key":
        w.f(24, 0x498342)
        color()
        size()
    else:
        if not show:
            w.f(1, 1)                           # intra_only
        if not h.error_resilient:
            w.f(2, 0)
        if h.kind == "intra_only":
            w.f(24, 0x498342)
            if h.profile > 0:
                color()
            w.f(8, h.refresh)
            size()
        else:
            w.f(8, h.refresh)
            for i in range(3):
                w.f(3, i)
                w.f(1, 0)
            if h.found_ref < 0:
                w.f(3, 0)
                w.f(16, h.width - 1)
                w.f(16, h.height - 1)
            else:
                w.f(h.found_ref, 0)
                w.f(1, 1)
            w.f(1, 0)                           # render size same
            w.f(1, 1)                           # allow_high_precision_mv
            w.f(1, 0)                           # not switchable
            w.f(2, 1)
    if not h.error_resilient:
        w.f(2, 0b11)
    w.f(2, 0)
    w.f(6, 10)
    w.f(3, 0)
    if h.lf_deltas:
        w.f(1, 1)
        w.f(1, 1)
        for d in h.lf_deltas:
            w.f(1, d is not None)
            if d is not None:
                w.f(7, d)
    else:
        w.f(1, 0)
    w.f(8, 60)
    for d in h.deltas_q:
        w.f(1, d is not None)
        if d is not None:
            w.f(5, d)
    w.f(1, int(h.segmentation))
    if h.segmentation:
        w.f(1, 1)                               # update_map
        for i in range(7):
            w.f(1, i % 2)
            if i % 2:
                w.f(8, 128)
        w.f(1, 1)                               # temporal_update
        for _ in range(3):
            w.f(1, 1)
            w.f(8, 7)
        w.f(1, 1)                               # update_data
        w.f(1, 0)
        for seg in range(8):
            for bits, signed in ((8, 1), (6, 1), (2, 0), (0, 0)):
                on = (seg + bits) % 3 == 0
                w.f(1, int(on))
                if on:
                    w.f(bits + signed, 1)
    sb64 = ((h.width + 7) // 8 + 7) // 8
    min_log2, max_log2 = 0, 1
    while (64 << min_log2) < sb64:
        min_log2 += 1
    while (sb64 >> max_log2) >= 4:
        max_log2 += 1
    max_log2 -= 1
    cols = min(h.tile_col_bits, max_log2 - min_log2)
    w.f(cols, (1 << cols) - 1)
    if min_log2 + cols < max_log2:
        w.f(1, 0)
    w.f(1, h.tile_rows > 0)
    if h.tile_rows:
        w.f(1, h.tile_rows - 1)
    w.f(16, 99)                                 # header_size_in_bytes
    data = w.bytes()
    return data, len(data)


headers = st.builds(
    Header,
    kind=st.sampled_from(["key", "inter", "intra_only"]),
    profile=st.integers(0, 3),
    error_resilient=st.integers(0, 1),
    width=st.integers(16, 4096),
    height=st.integers(16, 2304),
    found_ref=st.integers(-1, 2),
    refresh=st.integers(0, 255),
    lf_deltas=st.one_of(st.just([]), st.lists(st.one_of(st.none(), st.integers(0, 127)), min_size=6, max_size=6)),
    deltas_q=st.lists(st.one_of(st.none(), st.integers(0, 31)), min_size=3, max_size=3),
    segmentation=st.booleans(),
    tile_col_bits=st.integers(0, 6),
    tile_rows=st.integers(0, 2),
)


def superframe(frames: list[bytes], size_bytes: int = 4) -> bytes:
    marker = 0xC0 | ((size_bytes - 1) << 3) | (len(frames) - 1)
    index = bytes([marker]) + b"".join(len(f).to_bytes(size_bytes, "little") for f in frames) + bytes([marker])
    return b"".join(frames) + index


def check_map(subs: tuple[Subsample, ...], sample_size: int) -> None:
    assert sum(s.clear + s.protected for s in subs) == sample_size
    assert all(s.protected % 16 == 0 for s in subs)


@settings(max_examples=300, deadline=None)
@given(h=headers, body=st.integers(1, 3000))
def test_the_header_size_is_found_whatever_its_fields(h, body):
    reader = Vp9HeaderReader()
    if h.kind != "key":
        reader.frame(write_header(Header(width=h.width, height=h.height))[0] + bytes(8))  # sizes every slot
    head, size = write_header(h)
    frame = reader.frame(head + bytes(body))
    assert frame.header_size == size
    assert (frame.width, frame.height) == (h.width, h.height)
    assert frame.keyframe == (h.kind == "key")
    subs = vp9_subsamples([frame], 0)
    check_map(subs, size + body)
    # Shaka Packager's layout: protection starts right after the header, the partial block ends
    # the frame clear.
    if body >= 16:
        assert subs[0] == Subsample(size, body - body % 16)
        assert subs[1:] == ((Subsample(body % 16, 0),) if body % 16 else ())
    else:
        assert subs == (Subsample(size + body, 0),)


def test_an_inter_frame_takes_its_width_from_the_reference_it_names():
    """The tile fields depend on the width; a frame sized from slot 2 reads them with slot 2's
    width, which a keyframe and then an intra-only frame refreshing slot 2 set."""
    reader = Vp9HeaderReader()
    reader.frame(write_header(Header(width=4096, height=2160))[0] + bytes(4))
    reader.frame(write_header(Header(kind="intra_only", width=320, height=180, refresh=0b00100000))[0] + bytes(4))
    assert reader.ref_sizes[2] == (320, 180) and reader.ref_sizes[0] == (4096, 2160)
    head, size = write_header(Header(kind="inter", found_ref=2, width=320, height=180, tile_col_bits=0))
    f = reader.frame(head + bytes(40))
    assert (f.width, f.header_size) == (320, size)


def test_a_superframe_keeps_every_header_and_its_index_clear():
    reader = Vp9HeaderReader()
    key, key_size = write_header(Header())
    hidden, hidden_size = write_header(Header(kind="inter", found_ref=0))
    shown = bytes([0b10001000])                 # show_existing_frame of slot 0: one byte
    frames = [key + bytes(1000), hidden + bytes(35), shown]
    sample = superframe(frames)
    sizes, index = split_superframe(sample)
    assert sizes == [len(f) for f in frames] and index == 2 + 3 * 4
    subs = reader.subsamples(sample)
    check_map(subs, len(sample))
    body0 = 1000 - 1000 % 16
    body1 = 35 - 35 % 16
    assert subs == (Subsample(key_size, body0), Subsample(1000 % 16 + hidden_size, body1),
                    Subsample(35 % 16 + 1 + index, 0))


def test_frames_with_too_little_to_protect_merge_their_clear_bytes_forward():
    frames = [Vp9Frame(20, 10, 8, 8, True), Vp9Frame(3, 3, 8, 8, False), Vp9Frame(100, 12, 8, 8, False)]
    assert vp9_subsamples(frames, 5) == (Subsample(20 + 3 + 12, 80), Subsample(8 + 5, 0))
    # More than 65535 clear bytes in a row are split (senc counts them in 16 bits).
    big = [Vp9Frame(70000, 70000, 8, 8, False), Vp9Frame(48, 16, 8, 8, False)]
    assert vp9_subsamples(big, 0) == (Subsample(65535, 0), Subsample(70000 - 65535 + 16, 32))
    assert vp9_subsamples([Vp9Frame(100, 10, 8, 8, True)], 0) == (Subsample(10, 80), Subsample(10, 0))


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
def test_encryption_leaves_the_headers_and_index_clear_and_decrypts(scheme):
    key, _ = write_header(Header())
    inter, _ = write_header(Header(kind="inter", found_ref=0))
    body = bytes(range(256)) * 8
    samples = [key + body, superframe([inter + body[:500], bytes([0b10001000])]), inter + body[:77]]
    enc = SampleEncryptor(scheme, KEY, "vp9", iv=bytes(16) if scheme == "cbcs" else bytes(8))
    dec = SampleEncryptor(scheme, KEY, "vp9", iv=bytes(16) if scheme == "cbcs" else bytes(8))
    for sample in samples:
        sealed, aux = enc.encrypt(sample)
        check_map(aux.subsamples, len(sample))
        at = 0
        for s in aux.subsamples:                # every clear range is untouched
            assert sealed[at:at + s.clear] == sample[at:at + s.clear]
            at += s.clear + s.protected
        assert sealed != sample
        assert dec.decrypt(sealed, aux) == sample
    assert enc.pattern == ((1, 9) if scheme == "cbcs" else (0, 0))


def test_opus_is_encrypted_whole():
    enc = SampleEncryptor("cbcs", KEY, "opus", iv=bytes(16))
    sealed, aux = enc.encrypt(bytes(100))
    assert aux.subsamples == () and enc.pattern == (0, 0)
    assert sealed[:96] != bytes(96) and sealed[96:] == bytes(4)   # a trailing partial block stays clear


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_hostile_samples_are_refused_or_mapped_exactly(data):
    reader = Vp9HeaderReader()
    try:
        subs = reader.subsamples(data)
    except MalformedMedia:
        return
    check_map(subs, len(data))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8), st.integers(1, 4))
def test_superframe_index_round_trips(frames, size_bytes):
    sample = superframe(frames, size_bytes)
    assert split_superframe(sample) == ([len(f) for f in frames], 2 + len(frames) * size_bytes)


def test_a_last_byte_like_a_marker_without_its_twin_is_a_lone_frame():
    head, size = write_header(Header())
    frame = head + bytes(40) + bytes([0xC9])    # marker-like, but the index's first byte is not there
    assert split_superframe(frame) == ([len(frame)], 0)
    (f,) = Vp9HeaderReader().frames(frame)
    assert (f.size, f.header_size) == (len(frame), size)


@pytest.mark.parametrize("sample", [
    b"", bytes([0xC1, 1, 1, 0xC1]),                           # empty; index sizes not adding up
    bytes([0x80]) + bytes([0xC1, 0, 1, 0xC1]),                # a zero-sized frame in the index
    bytes([0b01000000]) + bytes(20),                          # wrong frame marker
    bytes([0b10000000, 0, 0, 0]),                             # keyframe with a wrong sync code
    bytes([0b10000010, 0x49, 0x83, 0x42]),                    # header runs past the frame
])
def test_malformed_samples(sample):
    with pytest.raises(MalformedMedia):
        Vp9HeaderReader().subsamples(sample)


def _vp09(vpcc: bytes) -> bytes:
    fields = bytes(6) + (1).to_bytes(2, "big") + bytes(16) + (320).to_bytes(2, "big") + (180).to_bytes(2, "big") \
        + bytes(50)
    return box(b"vp09", fields, full_box(b"vpcC", 1, 0, vpcc))


def _opus(channels: int = 2, family: int = 0) -> bytes:
    fields = bytes(6) + (1).to_bytes(2, "big") + bytes(8) + channels.to_bytes(2, "big") + (16).to_bytes(2, "big") \
        + bytes(4) + (48000 << 16).to_bytes(4, "big")
    dops = bytes([0, channels]) + (312).to_bytes(2, "big") + (48000).to_bytes(4, "big") + bytes(2) + bytes([family])
    return box(b"Opus", fields, box(b"dOps", dops))


def test_vp09_and_opus_sample_entries():
    v = read_sample_entry(_vp09(bytes([0, 31, 0x82, 2, 2, 2, 0, 0])), b"vide")
    assert (v.codec, v.width, v.height) == ("vp09.00.31.08", 320, 180)
    a = read_sample_entry(_opus(), b"soun")
    assert (a.codec, a.sample_rate, a.channels) == ("opus", 48000, 2)
    with pytest.raises(MalformedMedia):
        read_sample_entry(_vp09(bytes([0, 31, 0x52, 2, 2, 2, 0, 0])), b"vide")   # bit depth 5
    with pytest.raises(MalformedMedia):
        read_sample_entry(_opus(family=1), b"soun")                           # no mapping table
    with pytest.raises(MalformedMedia):
        read_sample_entry(box(b"vp09", bytes(78)), b"vide")                   # no vpcC
    with pytest.raises(UnsupportedMedia):
        read_sample_entry(_vp09(bytes([0, 31, 0x82])), b"soun")


def test_protected_entries_are_encv_and_enca():
    for entry, fourcc in ((_vp09(bytes([0, 31, 0x82, 2, 2, 2, 0, 0])), b"encv"), (_opus(), b"enca")):
        p = TrackProtector.for_sample_entry(entry, scheme="cenc", key=KEY, kid=bytes(16))
        out = p.sample_entry(entry)
        assert out[4:8] == fourcc and entry[4:8] in out and b"frma" in out
