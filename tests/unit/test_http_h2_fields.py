"""headwater.http.h2_fields: our HPACK blocks held to what the hpack library decodes, and the
request blocks remembered only while they mean the same."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hpack.exceptions import HPACKError, OversizedHeaderListError

from headwater.http import h2 as server_h2
from headwater.http.h2_fields import TABLE_SIZE_ZERO, CompressionError, RememberingDecoder, encode_field, header_frames
from tests.unit import test_http_h2

# Static pairs, static names (index < 15 and above: multi-byte integers), new names, values
# long enough for a multi-byte length, never-indexed names, an empty value.
FIELDS = [
    (b":status", b"200"), (b":status", b"203"), (b"content-type", b"text/html"),
    (b"www-authenticate", b"Basic"), (b"accept-encoding", b"gzip, deflate"),
    (b"x-cache", b"Hit from pop-1"), (b"etag", b'"' + b"a" * 300 + b'"'),
    (b"set-cookie", b"a=b"), (b"authorization", b"secret"), (b"x-empty", b""),
    (b"x-" + b"n" * 200, b"v" * 5000),
]


@pytest.mark.parametrize("field", FIELDS)
def test_a_field_decodes_to_itself_and_leaves_the_table_empty(field: tuple[bytes, bytes]) -> None:
    decoder = hpack.Decoder()
    assert decoder.decode(encode_field(*field), raw=True) == [field]
    assert not decoder.header_table.dynamic_entries


def test_never_indexed_names_say_so() -> None:
    [decoded] = hpack.Decoder().decode(encode_field(b"set-cookie", b"a=b"), raw=True)
    assert isinstance(decoded, hpack.NeverIndexedHeaderTuple)
    [decoded] = hpack.Decoder().decode(encode_field(b"x-cache", b"Hit"), raw=True)
    assert not isinstance(decoded, hpack.NeverIndexedHeaderTuple)


def test_a_long_block_is_split_into_continuation_frames() -> None:
    block = b"".join(encode_field(*f) for f in FIELDS)
    frames = header_frames(5, block, end_stream=True, max_frame=100)
    assert len(frames) == -(-len(block) // 100)
    payload = b""
    for i, frame in enumerate(frames):
        length, kind, flags = int.from_bytes(frame[:3], "big"), frame[3], frame[4]
        assert int.from_bytes(frame[5:9], "big") == 5 and length == len(frame) - 9
        assert kind == (0x1 if i == 0 else 0x9)
        assert bool(flags & 0x1) == (i == 0)  # END_STREAM on HEADERS only
        assert bool(flags & 0x4) == (i == len(frames) - 1)  # END_HEADERS on the last
        payload += frame[9:]
    assert payload == block


class Pair(test_http_h2.Pair):
    """An h2 library client and our server connection, back to back, asking for GETs."""

    def request(self, sid: int, extra=(), path: str = "/", end: bool = True) -> None:  # type: ignore[override]
        self.client.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                       (":authority", "example"), *extra], end_stream=end)
        self.exchange()

    def responses(self) -> list[list[tuple[bytes, bytes]]]:
        return [list(e.headers) for e in self.client_events if isinstance(e, h2.events.ResponseReceived)]


def _header_blocks(wire: bytes) -> list[bytes]:
    """The HEADERS frames' payloads in ``wire`` (server frames after the preface)."""
    out, i = [], 0
    while i < len(wire):
        n, kind = int.from_bytes(wire[i:i + 3], "big"), wire[i + 3]
        if kind == 0x1:
            out.append(wire[i + 9:i + 9 + n])
        i += 9 + n
    return out


def test_response_blocks_decode_to_what_h2s_encoder_would_have_sent() -> None:
    p = Pair()
    sent = [("Content-Type", "text/plain"), ("Connection", "close"), ("ETag", ' "x" '),
            ("Cache-Control", "max-age=60"), ("Age", "3"), ("Via", "1.1 pop-1 (headwater)"),
            ("Set-Cookie", "a=b"), ("x-cache", "Hit from pop-1")]
    # What the fields were before our encoder: lower-cased, stripped, latin-1, hop-by-hop left
    # out, then content-length, date and server added (as h2's encoder was handed them).
    expected = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"etag", b'"x"'),
                (b"cache-control", b"max-age=60"), (b"age", b"3"), (b"via", b"1.1 pop-1 (headwater)"),
                (b"set-cookie", b"a=b"), (b"x-cache", b"Hit from pop-1"), (b"content-length", b"5"),
                (b"date", b"Sun, 09 Sep 2001 01:46:40 GMT"), (b"server", b"headwater")]
    for sid in (1, 3, 5):  # the second and third from the field memo
        p.request(sid)
        p.wire.clear()
        assert not p.server.send_response(sid, 200, sent, body_length=5)
        p.server.send_data(sid, b"hello", end_stream=True)
        p.exchange()
        [block] = _header_blocks(b"".join(p.wire))
        # Only the first block of the connection sets the peer's table size to 0.
        assert block.startswith(TABLE_SIZE_ZERO) == (sid == 1)
        decoder = hpack.Decoder()
        assert decoder.decode(block, raw=True) == hpack.Decoder().decode(hpack.Encoder().encode(expected), raw=True)
        assert decoder.decode(block, raw=True) == expected
        assert not decoder.header_table.dynamic_entries  # nothing inserted: no state to keep
    assert p.responses() == [expected] * 3  # and the h2 library, as the client, agrees


def test_blocks_past_the_peer_frame_size_and_a_zero_table_size_decode() -> None:
    config = h2.config.H2Configuration(client_side=True)
    client = h2.connection.H2Connection(config)
    client.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    p = Pair.__new__(Pair)
    p.client, p.server = client, server_h2.H2Connection()
    p.server.initiate()
    client.initiate_connection()
    p.server_events, p.client_events, p.wire = [], [], []
    p.exchange()
    p.request(1)
    big = "v" * 40_000  # > 16 KiB, the default SETTINGS_MAX_FRAME_SIZE: CONTINUATION frames
    p.server.send_response(1, 200, [("x-big", big)], body_length=0)
    p.request(3)
    p.server.send_informational(3, 100)
    p.server.send_response(3, 404, [("x-a", "b")], body_length=0)
    p.exchange()
    first, second = p.responses()
    assert (b"x-big", big.encode()) in first and (b":status", b"404") in second
    assert any(isinstance(e, h2.events.InformationalResponseReceived) for e in p.client_events)
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in p.client_events)


def _blocks_with_table_changes() -> list[bytes]:
    """Request blocks as a client's encoder makes them: inserting, then only indexing, then
    inserting again (which moves every index), a table resize, and back."""
    enc = hpack.Encoder()
    base = [(":method", "GET"), (":scheme", "https"), (":authority", "a.example"), ("user-agent", "t")]
    blocks = []
    for path in ("/a", "/a", "/a", "/b", "/a", "/a", "/c", "/a"):
        blocks.append(enc.encode([*base, (":path", path)]))
    enc.header_table_size = 64  # evicts: the same fields now encode otherwise
    blocks += [enc.encode([*base, (":path", "/a")]) for _ in range(3)]
    return blocks


def _refused_as(e: Exception) -> type[Exception]:
    """What the remembering decoder raises where hpack's decoder raised ``e``: an undecodable
    block is a CompressionError (GOAWAY COMPRESSION_ERROR); an oversized list stays hpack's
    (h2 makes it ENHANCE_YOUR_CALM)."""
    return type(e) if isinstance(e, OversizedHeaderListError) else CompressionError


def test_a_remembered_block_decodes_as_a_full_decode_would() -> None:
    blocks = _blocks_with_table_changes()
    plain, remembering = hpack.Decoder(), RememberingDecoder()
    remembered = 0
    for block in blocks + blocks[1:3]:  # (the last ones: old blocks now index other entries)
        try:
            want = plain.decode(block, raw=True)
        except Exception as e:
            with pytest.raises(_refused_as(e)):
                remembering.decode(block, raw=True)
            continue
        remembered += block in remembering._blocks
        assert remembering.decode(block, raw=True) == want
    assert remembered >= 2  # some were answered from memory


_FIELD = st.tuples(st.sampled_from([":path", "x-a", "x-b", "cookie", "user-agent"]),
                   st.sampled_from(["/", "/a", "1", "22", "v" * 40]))
# A step: a header list to encode, or a new table size for the client's encoder.
_STEP = st.one_of(st.lists(_FIELD, min_size=1, max_size=4), st.sampled_from([0, 64, 256, 4096]))


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_STEP, max_size=30), repeat=st.integers(1, 3))
def test_remembered_blocks_always_decode_as_hpack_does(steps: list, repeat: int) -> None:
    enc, plain, remembering = hpack.Encoder(), hpack.Decoder(), RememberingDecoder()
    for step in steps:
        if isinstance(step, int):
            enc.header_table_size = step
            continue
        block = enc.encode(step)
        for _ in range(repeat):  # (the same bytes again: from memory when the table held still)
            try:
                want = plain.decode(block, raw=True)
            except HPACKError as e:  # (hpack's encoder resizes oddly: then both refuse it)
                with pytest.raises(_refused_as(e)):
                    remembering.decode(block, raw=True)
                continue
            assert remembering.decode(block, raw=True) == want
        assert list(remembering.header_table.dynamic_entries) == list(plain.header_table.dynamic_entries)


def test_a_remembered_block_still_meets_the_header_list_limit() -> None:
    block = hpack.Encoder().encode([(":method", "GET"), (":path", "/")])
    decoder = RememberingDecoder()
    decoder.decode(block, raw=True)
    assert decoder._blocks
    decoder.max_header_list_size = 10
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(block, raw=True)


def _lax_pair() -> Pair:
    return Pair(client_config=h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))


@pytest.mark.parametrize("bad", [[("X-Upper", "1")], [("connection", "keep-alive")], [("te", "gzip")],
                                 [("x-a", " padded")], [(":bogus", "1")]])
def test_a_malformed_request_block_ends_the_connection(bad) -> None:
    p = _lax_pair()
    for sid in (1, 3):  # the good block, twice: its fields are remembered as checked
        p.request(sid, [("x-ok", "1")])
    assert len([e for e in p.server_events if isinstance(e, server_h2.StreamRequest)]) == 2
    p.request(5, bad)
    assert isinstance(p.server_events[-1], server_h2.ConnectionEnded)
    assert p.server_events[-1].error_code == 1  # PROTOCOL_ERROR
    assert not any(isinstance(e, server_h2.StreamRequest) and e.stream_id == 5 for e in p.server_events)
    [goaway] = [e for e in p.client_events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.error_code == 1


def test_trailers_with_pseudo_fields_end_the_connection() -> None:
    p = _lax_pair()
    p.request(1, end=False)
    p.client.send_headers(1, [("x-trailer", "1")], end_stream=True)
    p.exchange()
    assert not any(isinstance(e, server_h2.ConnectionEnded) for e in p.server_events)
    p.request(3, end=False)
    p.client.send_headers(3, [(":path", "/x")], end_stream=True)
    p.exchange()
    assert isinstance(p.server_events[-1], server_h2.ConnectionEnded)


def test_split_cookie_fields_are_joined_into_one() -> None:
    p = Pair()
    for sid in (1, 3):  # (the second from the memo of checked requests)
        p.request(sid, [("cookie", "a=1"), ("x-y", "z"), ("cookie", "b=2")])
    first, second = [e for e in p.server_events if isinstance(e, server_h2.StreamRequest)]
    assert first.headers == second.headers == [("x-y", "z"), ("cookie", "a=1; b=2"), ("host", "example")]


def test_split_cookie_fields_are_checked_joined_as_h2_checked_them() -> None:
    # A crumb ending with a blank is no field of its own once joined ("a=1 ; b=2"): accepted
    # before our own checks (7207706), and still, first from the checks, then from the memo.
    p = _lax_pair()
    for sid in (1, 3):
        p.request(sid, [("cookie", "a=1 "), ("cookie", " b=2")])
    assert not any(isinstance(e, server_h2.ConnectionEnded) for e in p.server_events)
    first, second = [e for e in p.server_events if isinstance(e, server_h2.StreamRequest)]
    assert first.headers == second.headers == [("cookie", "a=1 ;  b=2"), ("host", "example")]
