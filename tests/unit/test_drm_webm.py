"""The WebM writer and its bounded EBML reader, and WebM Encryption, without sockets or media:
elements round-trip, hostile bytes are refused with MalformedMedia (never a hang or a huge
allocation), and frames encrypted by the writer decrypt with pycryptodome as the WebM
Encryption spec describes (signal byte, 8-byte IV, AES-128-CTR with IV || 8 zero bytes)."""

from __future__ import annotations

import pytest
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.drm.errors import BadKey, MalformedMedia, UnsupportedMedia
from headwater.drm.webm import ebml
from headwater.drm.webm.encrypt import FrameEncryptor, decrypt_frame
from headwater.drm.webm.ids import CLUSTER, SEGMENT, SIMPLE_BLOCK, TIMESTAMP, TRACK_ENTRY
from headwater.drm.webm.segment import Block, WebmTrack, cluster, init_segment, read_cluster, read_init

KEY = bytes(range(16))
KID = bytes(range(16, 32))


@pytest.mark.parametrize("n,encoded", [(0, b"\x80"), (126, b"\xfe"), (127, b"\x40\x7f"), (16382, b"\x7f\xfe"),
                                       (16383, b"\x20\x3f\xff")])
def test_sizes_are_the_shortest_vint_and_never_the_unknown_value(n, encoded):
    # 127 in one byte would be 0xFF: "unknown size". It takes two.
    assert ebml.encode_size(n) == encoded
    assert ebml.read_vint(encoded, 0, len(encoded)) == (n, len(encoded), False)


@given(st.integers(0, (1 << 56) - 2))
def test_any_size_round_trips(n):
    b = ebml.encode_size(n)
    assert ebml.read_vint(b, 0, len(b))[0::2] == (n, False)


def test_elements_round_trip_through_the_reader():
    doc = ebml.master(CLUSTER, ebml.uint(TIMESTAMP, 2000), ebml.element(SIMPLE_BLOCK, b"\x81\x00\x00\x80abc"))
    (c,) = ebml.iter_elements(doc)
    assert (c.id, c.offset, c.end) == (CLUSTER, 0, len(doc))
    ts, block = ebml.children(doc, c)
    assert ebml.read_uint(doc, ts) == 2000 and doc[block.start:block.end] == b"\x81\x00\x00\x80abc"
    assert ebml.uint(TIMESTAMP, 0) == b"\xe7\x81\x00" and ebml.float64(0xB5, 48000.0)[-8:] == bytes.fromhex(
        "40e7700000000000")


@pytest.mark.parametrize("data,message", [
    (b"\x1f\x43\xb6\x75\x85\xe7\x81", "claims 5 bytes"),              # a size past the buffer
    (b"\x1f\x43\xb6\x75\x84\xe7\x88\x00\x00", "claims 8 bytes, 2 are left"),  # a child past its parent
    (b"\x00\x80", "longer than 4 bytes"),                               # an ID with no marker bit
    (b"\xa3\x00", "longer than 8 bytes"),                               # a size with no marker bit
    (b"\xa3\x40", "runs past"),                                          # a truncated size
    (b"\xe7\x01\xff\xff\xff\xff\xff\xff\xff", "unknown size"),          # unknown size where none may be
    (b"\x1a\x45\xdf", "runs past"),                                      # a truncated ID
])
def test_hostile_elements_are_refused(data, message):
    with pytest.raises(MalformedMedia, match=message):
        for e in ebml.iter_elements(data):
            if e.id == CLUSTER:
                list(ebml.children(data, e))


def test_nesting_and_element_counts_are_bounded():
    deep = b""
    for _ in range(50):
        deep = ebml.element(TRACK_ENTRY, deep)

    def walk(buf, parent, limits):
        for e in ebml.children(buf, parent, limits=limits):
            walk(buf, e, limits)
    (top,) = ebml.iter_elements(deep)
    with pytest.raises(MalformedMedia, match="deeper than 8"):
        walk(deep, top, ebml.EbmlLimits())
    many = ebml.element(TIMESTAMP, b"") * 1000
    with pytest.raises(MalformedMedia, match="more than 100 elements"):
        list(ebml.iter_elements(many, limits=ebml.EbmlLimits(max_elements=100)))
    # An unknown-size Segment runs to the end of what holds it: a 2^56-byte claim allocates nothing.
    segment = ebml.unknown_size_header(SEGMENT) + ebml.uint(TIMESTAMP, 1)
    (s,) = ebml.iter_elements(segment)
    assert s.end == len(segment)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_refused_with_malformed_media(data):
    try:
        read_cluster(data, ebml.EbmlLimits(max_elements=1000))
    except (MalformedMedia, UnsupportedMedia):
        pass
    try:
        read_init(data, ebml.EbmlLimits(max_elements=1000))
    except (MalformedMedia, UnsupportedMedia):
        pass


def test_init_and_cluster_read_back():
    enc = FrameEncryptor(KEY, KID, random_bytes=lambda n: b"\xff" * n)
    track = WebmTrack(kind="audio", codec_id="A_OPUS", sample_rate=48000, channels=2, codec_private=b"OpusHead..",
                      codec_delay_ns=6_500_000, seek_pre_roll_ns=80_000_000, encryption=enc.track_encodings())
    back = read_init(init_segment(track))
    assert back.kid == KID and back.codec_id == "A_OPUS" and (back.sample_rate, back.channels) == (48000, 2)
    assert (back.codec_private, back.codec_delay_ns, back.seek_pre_roll_ns) == (b"OpusHead..", 6_500_000, 80_000_000)
    blocks = [Block(2000, True, b"key"), Block(2040, False, b"delta"), Block(1990, False, b"earlier")]
    assert read_cluster(cluster(blocks)) == blocks
    with pytest.raises(UnsupportedMedia, match="longer than"):
        cluster([Block(0, True, b"a"), Block(40_000, False, b"b")])
    with pytest.raises(MalformedMedia, match="truncated inside its header"):
        read_cluster(ebml.master(CLUSTER, ebml.uint(TIMESTAMP, 0), ebml.element(SIMPLE_BLOCK, b"\x81\x00")))
    with pytest.raises(UnsupportedMedia, match="laced"):
        read_cluster(ebml.master(CLUSTER, ebml.uint(TIMESTAMP, 0), ebml.element(SIMPLE_BLOCK, b"\x81\x00\x00\x86x")))


def test_frames_decrypt_with_pycryptodome_as_the_spec_says():
    starts = iter([b"\x00\x00\x00\x00\x00\x00\x00\x07"])
    enc = FrameEncryptor(KEY, KID, random_bytes=lambda n: next(starts))
    frames = [bytes(range(i, i + 37 * i + 1)) for i in range(5)]
    sealed = [enc.encrypt(f) for f in frames]
    for i, (frame, s) in enumerate(zip(frames, sealed)):
        assert s[0] == 0x01 and s[1:9] == (7 + i).to_bytes(8, "big")   # one IV per frame, counting up
        counter_block = s[1:9] + bytes(8)
        clear = AES.new(KEY, AES.MODE_CTR, nonce=b"", initial_value=counter_block).decrypt(s[9:])
        assert clear == frame and (len(frame) < 4 or s[9:] != frame)
        assert decrypt_frame(KEY, s) == frame
    assert decrypt_frame(bytes(16), sealed[3]) != frames[3]              # another key: other bytes
    assert decrypt_frame(KEY, b"\x00clear") == b"clear"
    with pytest.raises(MalformedMedia, match="signal byte"):
        decrypt_frame(KEY, b"\x03" + bytes(20))
    with pytest.raises(MalformedMedia, match="shorter than its IV"):
        decrypt_frame(KEY, b"\x01abc")
    with pytest.raises(BadKey):
        FrameEncryptor(KEY[:8], KID)
    # The track entry names AES (5), the KID and CTR (1).
    encodings = enc.track_encodings()
    assert b"\x47\xe1\x81\x05" in encodings and b"\x47\xe2\x90" + KID in encodings and b"\x47\xe8\x81\x01" in encodings


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.lists(st.tuples(st.integers(-32768, 32767), st.booleans(), st.binary(max_size=300)),
                                       min_size=1, max_size=20))
def test_any_cluster_reads_back_as_written(base, frames):
    blocks = [Block(base, True, frames[0][2])] + [Block(base + rel, key, data) for rel, key, data in frames[1:]]
    assert read_cluster(cluster(blocks)) == blocks
    # Cut anywhere short of its end, it is refused, never misread.
    whole = cluster(blocks)
    for cut in {1, len(whole) // 2, len(whole) - 1}:
        with pytest.raises(MalformedMedia):
            read_cluster(whole[:cut])
