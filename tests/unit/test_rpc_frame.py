"""Sans-IO framing: round trips however the bytes are split, and limits."""

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.rpc.frame import (CANCEL, ERROR, LOOKAHEAD_BYTES, REQUEST, RESPONSE, FrameDecoder, FrameError,
                                 cancel_header, encode_frame, error_header, request_header,
                                 response_header)


def wire(header: bytes, payload: bytes = b"", **kw) -> bytes:
    return b"".join(bytes(b) for b in encode_frame(header, payload, **kw))


def decode_all(data: bytes, cuts: list[int], **kw):
    d = FrameDecoder(**kw)
    frames = []
    last = 0
    for c in sorted(set(cuts)) + [len(data)]:
        d.feed(data[last:c])
        last = c
        while (f := d.next_frame()) is not None:
            frames.append(f)
    assert d.buffered == 0
    return frames


def test_request_round_trip():
    data = wire(request_header(7, "frag.read", {"fid": "a", "n": 2}, 1.5), b"payload")
    [f] = decode_all(data, [])
    assert f.header == [REQUEST, 7, "frag.read", {"fid": "a", "n": 2}, 1.5]
    assert f.payload == b"payload"
    assert isinstance(f.payload, bytes)


def test_every_message_kind():
    data = (wire(response_header(1, {"ok": True}), b"x" * 100_000)
            + wire(error_header(2, "bad_request", "no", {"k": 1}))
            + wire(cancel_header(3)))
    frames = decode_all(data, [5, 9, 100, 70_000])
    assert [f.header[0] for f in frames] == [RESPONSE, ERROR, CANCEL]
    assert frames[0].payload == b"x" * 100_000
    assert frames[1].header == [ERROR, 2, "bad_request", "no", {"k": 1}]
    assert frames[2].payload == b""


def test_large_payload_is_not_joined_into_the_header_buffer():
    payload = bytes(range(256)) * 1024
    bufs = encode_frame(response_header(1, None), payload)
    assert len(bufs) == 2 and bufs[1].obj is payload  # no copy of the payload
    small = encode_frame(response_header(1, None), b"abc")
    assert len(small) == 1


def test_a_payload_of_several_buffers_goes_out_unjoined_and_arrives_as_one():
    blocks = [bytes([i]) * 70_000 for i in range(3)] + [memoryview(b"tail")]
    bufs = encode_frame(request_header(7, "frag.append", {"n": 4}, None), blocks)
    assert len(bufs) == 5 and bufs[4] is blocks[3]
    assert all(v.obj is b for v, b in zip(bufs[1:4], blocks[:3]))  # views of the blocks: no copies
    d = FrameDecoder()
    d.feed(b"".join(bytes(b) for b in bufs))
    frame = d.next_frame()
    assert frame is not None and frame.payload == b"".join(bytes(b) for b in blocks)
    # Small ones are joined, prefix and all, as a single buffer would be.
    assert wire(cancel_header(1), [b"ab", b"", b"c"]) == wire(cancel_header(1), b"abc")
    with pytest.raises(FrameError):
        encode_frame(b"\x90", [b"x" * 60, b"x" * 41], max_frame_bytes=100)


def test_byte_at_a_time():
    data = wire(request_header(1, "m", None, None), b"hello") * 3
    frames = decode_all(data, list(range(len(data))))
    assert [f.payload for f in frames] == [b"hello"] * 3
    assert frames[0].header[3] == {}


@settings(max_examples=200)
@given(payloads=st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
       cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=12))
def test_any_split_decodes_the_same(payloads, cuts):
    data = b"".join(wire(response_header(i, i), p, join_below=1000) for i, p in enumerate(payloads))
    cuts = [c for c in cuts if c < len(data)]
    frames = decode_all(data, cuts)
    assert [f.payload for f in frames] == payloads
    assert [f.header[2] for f in frames] == list(range(len(payloads)))


def test_oversized_frame_is_refused_both_ways():
    with pytest.raises(FrameError):
        encode_frame(b"\x90", b"x" * 101, max_frame_bytes=100)
    d = FrameDecoder(max_frame_bytes=100)
    d.feed(struct.pack("!II", 1000, 1))
    with pytest.raises(FrameError, match="limit"):
        d.next_frame()


@pytest.mark.parametrize("prefix", [struct.pack("!II", 10, 11), struct.pack("!II", 10, 0)])
def test_bad_header_length(prefix):
    d = FrameDecoder()
    d.feed(prefix + b"\0" * 10)
    with pytest.raises(FrameError):
        d.next_frame()


@pytest.mark.parametrize("header", [msgpack.packb({"a": 1}), msgpack.packb([]), b"\xc1", msgpack.packb(["x"])])
def test_header_that_is_not_a_message(header):
    d = FrameDecoder()
    d.feed(struct.pack("!II", len(header), len(header)) + header)
    with pytest.raises(FrameError):
        d.next_frame()


def test_wanted_reports_missing_bytes():
    d = FrameDecoder()
    assert d.wanted() == 8
    data = wire(response_header(1, None), b"z" * 50)
    d.feed(data[:20])
    assert d.next_frame() is None
    assert d.wanted() == len(data) - 20


def decode_like_a_socket(data: bytes, sizes: list[int]):
    """Decode ``data`` as the RPC readers do: a large payload's rest received in place with
    ``payload_target``, the rest fed in reads of the next size from ``sizes`` (cycled)."""
    d = FrameDecoder()
    frames, pos, step, direct = [], 0, 0, 0
    while pos < len(data):
        target = d.payload_target()
        size = sizes[step % len(sizes)]
        step += 1
        if target is not None:
            n = min(size, len(target), len(data) - pos)
            target[:n] = data[pos:pos + n]
            d.filled(n)
            direct += 1
        else:
            n = min(size, len(data) - pos)
            d.feed(data[pos:pos + n])
        pos += n
        while (f := d.next_frame()) is not None:
            frames.append(f)
    assert d.buffered == 0 and d.payload_target() is None
    return frames, direct


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.sampled_from([0, 10, 65535, 65536, 70000, 300000]), min_size=1, max_size=5),
       sizes=st.lists(st.integers(1, 200000), min_size=1, max_size=6))
def test_payloads_received_in_place_match_the_fed_ones(lengths, sizes):
    frames_in = [(request_header(i, "frag.append", {"i": i}, 1.0), bytes([i % 251]) * n)
                 for i, n in enumerate(lengths)]
    data = b"".join(wire(h, p) for h, p in frames_in)
    got, direct = decode_like_a_socket(data, sizes)
    assert [(f.header[1], bytes(f.payload)) for f in got] == [(i, p) for i, (_, p) in enumerate(frames_in)]
    big = [f for f in got if len(f.payload) >= 300000]
    if big and max(sizes) < 65536:
        # Small reads cannot have fed a large payload whole: its rest came in place.
        assert direct and all(isinstance(f.payload, bytearray) for f in big)


def test_payload_target_stops_at_the_frame_end_and_counts_as_buffered():
    one = wire(request_header(1, "m", {}, 1.0), b"a" * 100_000)
    two = wire(request_header(2, "m", {}, 1.0), b"b" * 10)
    d = FrameDecoder()
    d.feed(one[:1000])
    target = d.payload_target()
    assert target is not None and len(target) == len(one) - 1000
    assert d.buffered == 1000 - (len(one) - 100_000)  # the payload bytes already here
    target[:] = one[1000:]
    d.filled(len(target))
    f = d.next_frame()
    assert f.header[1] == 1 and f.payload == b"a" * 100_000 and d.buffered == 0
    d.feed(two)
    assert d.payload_target() is None
    assert d.next_frame().payload == b"b" * 10


@pytest.mark.parametrize("lengths", [[1 << 20] * 3, [10, 1 << 20, 0, 70000, 1 << 20, 5]])
def test_reads_sized_by_receive_size_copy_little_of_a_large_payload(lengths):
    """A reader that asks for ``receive_size(256 KiB)`` (a socket gives what is there, up to that)
    feeds at most a lookahead's worth of each large payload; the rest is received in place."""
    frames_in = [(response_header(i, {"lengths": [n]}), bytes([i % 251]) * n) for i, n in enumerate(lengths)]
    data = b"".join(wire(h, p) for h, p in frames_in)
    d = FrameDecoder()
    got, pos, fed = [], 0, 0
    while pos < len(data):
        target = d.payload_target()
        if target is not None:
            n = min(len(target), len(data) - pos)
            target[:n] = data[pos:pos + n]
            d.filled(n)
        else:
            n = min(d.receive_size(256 * 1024), len(data) - pos)
            d.feed(data[pos:pos + n])
            fed += n
        pos += n
        while (f := d.next_frame()) is not None:
            got.append(f)
    assert [(f.header[1], bytes(f.payload)) for f in got] == [(i, p) for i, (_, p) in enumerate(frames_in)]
    small = sum(len(wire(h, p)) for h, p in frames_in if len(p) < 1 << 20)
    assert fed <= small + len(lengths) * (LOOKAHEAD_BYTES + 100)


def test_payload_target_refuses_a_frame_over_the_limit():
    d = FrameDecoder(max_frame_bytes=1 << 20)
    d.feed(struct.pack("!II", 2 << 20, 10))
    with pytest.raises(FrameError):
        d.payload_target()


def test_a_payload_buffer_is_handed_out_only_once_filled_and_holds_what_came():
    """The payload buffer is not zeroed before the socket fills it (whatever the heap held is
    there at first): the frame must come out only once every byte was received into it."""
    payload = bytes(range(256)) * 1024
    data = wire(response_header(7, {}), payload)
    d = FrameDecoder()
    d.feed(data[:100])
    target = d.payload_target()
    assert target is not None
    half = len(target) // 2
    target[:half] = data[100:100 + half]
    d.filled(half)
    assert d.next_frame() is None
    target = d.payload_target()
    target[:] = data[100 + half:]
    d.filled(len(target))
    f = d.next_frame()
    assert isinstance(f.payload, bytearray) and f.payload == payload
