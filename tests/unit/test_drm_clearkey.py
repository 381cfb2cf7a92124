"""ClearKey licence requests and responses (drm/licence/clearkey.py): strict, bounded parsing."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.drm.errors import BadRequest, PayloadTooLarge
from headwater.drm.licence.clearkey import b64url, build_response, parse_request, unb64url

KID = bytes(range(16))
KID_TEXT = b64url(KID)


def body(doc) -> bytes:
    return json.dumps(doc).encode()


def test_round_trip_and_order_without_duplicates():
    other = b"\xff" * 16
    req = parse_request(body({"kids": [KID_TEXT, b64url(other), KID_TEXT], "type": "persistent-license"}))
    assert req.kids == (KID, other) and req.type == "persistent-license"
    assert parse_request(body({"kids": [KID_TEXT]})).type == "temporary"


def test_response_format():
    doc = json.loads(build_response([(KID, b"\x01" * 16)], "temporary"))
    assert doc == {"keys": [{"kty": "oct", "kid": KID_TEXT, "k": "AQEBAQEBAQEBAQEBAQEBAQ"}], "type": "temporary"}
    assert "=" not in KID_TEXT and len(KID_TEXT) == 22
    # the bytes are exactly the compact json.dumps of that document (the text is assembled by hand)
    pairs = [(bytes([i]) * 16, bytes([255 - i]) * 16) for i in range(0, 256, 37)]
    for session_type in ("temporary", "persistent-license"):
        want = {"keys": [{"kty": "oct", "kid": b64url(k), "k": b64url(v)} for k, v in pairs], "type": session_type}
        assert build_response(pairs, session_type) == json.dumps(want, separators=(",", ":")).encode()
    assert build_response([], "temporary") == b'{"keys":[],"type":"temporary"}'
    with pytest.raises(ValueError):
        build_response([(KID, b"short")], "temporary")
    with pytest.raises(ValueError):
        build_response([(KID, KID)], 'temporary"')


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", b"[1,2]", b'"kids"', b"null",
                                 b"[" * 5000 + b"]" * 5000, body({"kids": []}), body({"kids": "abc"}),
                                 body({"type": "temporary"}), body({"kids": [KID_TEXT], "type": "other"})])
def test_malformed_is_bad_request(raw):
    with pytest.raises(BadRequest):
        parse_request(raw, max_bytes=20_000)


def test_oversized_body():
    with pytest.raises(PayloadTooLarge):
        parse_request(body({"kids": [KID_TEXT], "pad": "x" * 9000}))


@pytest.mark.parametrize("kid", [
    KID_TEXT + "==",                                       # padded
    base64.b64encode(b"\xfb\xff" + KID[2:]).decode(),      # standard alphabet (+ /) and padding
    b64url(KID[:15]),                                      # 15 bytes
    b64url(KID + b"\0"),                                   # 17 bytes
    KID_TEXT[:-1] + "B",                                   # stray bits in the last character
    KID_TEXT[:-1] + "!",
    12345, None, "",
])
def test_bad_kids(kid):
    with pytest.raises(BadRequest, match=r"kids\[0\]"):
        parse_request(body({"kids": [kid]}))


def test_too_many_kids():
    kids = [b64url(i.to_bytes(16, "big")) for i in range(33)]
    with pytest.raises(BadRequest, match="at most 32"):
        parse_request(body({"kids": kids}))
    assert len(parse_request(body({"kids": kids[:32]})).kids) == 32


@given(st.binary(min_size=16, max_size=16))
def test_any_kid_round_trips(raw):
    assert unb64url(b64url(raw)) == raw


@given(st.binary(max_size=300))
def test_garbage_never_crashes(raw):
    try:
        parse_request(raw)
    except (BadRequest, PayloadTooLarge):
        pass
