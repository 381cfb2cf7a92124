"""The tus 1.0 protocol module, sans-IO: header parsing, the statuses the spec requires, the
upload state's offset, and where parts are cut."""

from __future__ import annotations

import base64
import hashlib

import pytest

from headwater.http import Headers
from headwater.origin.errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    Gone,
    PayloadTooLarge,
    PreconditionFailed,
    UnsupportedMediaType,
    wire_of,
)
from headwater.origin.upload import tus
from headwater.origin.upload.tus import Part, UploadState

MiB = 1024 * 1024


def state(**kw) -> UploadState:
    base = dict(id="a" * 32, owner="creator-app", length=12 * MiB, metadata="", created=1000.0, expires=2000.0,
                store_upload_id="u1", key="uploads/" + "a" * 32)
    base.update(kw)
    return UploadState(**base)


def patch_headers(offset: int, **extra: str) -> Headers:
    return Headers([("tus-resumable", "1.0.0"), ("content-type", tus.OFFSET_CONTENT_TYPE),
                    ("upload-offset", str(offset)), *extra.items()])


def test_version_is_required_but_for_options():
    tus.check_version("OPTIONS", Headers())
    with pytest.raises(PreconditionFailed):
        tus.check_version("HEAD", Headers())
    with pytest.raises(PreconditionFailed):
        tus.check_version("PATCH", Headers([("tus-resumable", "0.2.2")]))
    tus.check_version("PATCH", Headers([("tus-resumable", "1.0.0")]))
    assert wire_of(PreconditionFailed("x"))[0] == 412


def test_metadata_parsing():
    raw = "filename " + base64.b64encode(b"night train.mp4").decode() + ",is_confidential"
    assert tus.parse_metadata(raw, 4096) == {"filename": b"night train.mp4", "is_confidential": None}
    for bad in ("file name abc", "a YQ==,a YQ==", "k !!notbase64", "x" * 200):
        with pytest.raises(BadRequest):
            tus.parse_metadata(bad, 4096)
    with pytest.raises(BadRequest):
        tus.parse_metadata("k " + "QUFB" * 2000, 4096)


def test_creation_length_and_body_detection():
    h = Headers([("upload-length", "100")])
    assert tus.creation(h, max_size=1000, max_metadata_bytes=4096) == (100, "", False)
    with pytest.raises(PayloadTooLarge):
        tus.creation(Headers([("upload-length", "1001")]), max_size=1000, max_metadata_bytes=4096)
    for bad in ("", "-1", "1e3", "12 34"):
        with pytest.raises(BadRequest):
            tus.creation(Headers([("upload-length", bad)]), max_size=1000, max_metadata_bytes=4096)
    with pytest.raises(BadRequest):
        tus.creation(Headers([("upload-defer-length", "1")]), max_size=1000, max_metadata_bytes=4096)
    with_body = Headers([("upload-length", "100"), ("content-type", tus.OFFSET_CONTENT_TYPE),
                         ("content-length", "10")])
    assert tus.creation(with_body, max_size=1000, max_metadata_bytes=4096)[2] is True
    with pytest.raises(UnsupportedMediaType):
        tus.creation(Headers([("upload-length", "100"), ("content-type", "text/plain"), ("content-length", "3")]),
                     max_size=1000, max_metadata_bytes=4096)


def test_patch_checks_offset_type_length_and_expiry():
    st = state(parts=(Part(1, '"e1"', 5 * MiB),), spooled=1000)
    assert st.offset == 5 * MiB + 1000
    assert tus.patch_start(st, patch_headers(st.offset), now=1500.0) is None
    with pytest.raises(Conflict) as e:
        tus.patch_start(st, patch_headers(0), now=1500.0)
    assert wire_of(e.value) == (409, "offset_mismatch")
    with pytest.raises(BadRequest):
        tus.patch_start(st, Headers([("content-type", tus.OFFSET_CONTENT_TYPE)]), now=1500.0)
    with pytest.raises(UnsupportedMediaType):
        tus.patch_start(st, Headers([("upload-offset", str(st.offset)), ("content-type", "application/json")]),
                        now=1500.0)
    too_long = patch_headers(st.offset, **{"content-length": str(st.length - st.offset + 1)})
    with pytest.raises(PayloadTooLarge):
        tus.patch_start(st, too_long, now=1500.0)
    with pytest.raises(Gone):
        tus.patch_start(st, patch_headers(st.offset), now=2000.0)


def test_checksum_header():
    digest = hashlib.sha1(b"hello").digest()
    c = tus.parse_checksum("sha1 " + base64.b64encode(digest).decode())
    assert c is not None and c.algorithm == "sha1" and c.digest == digest
    h = c.new()
    h.update(b"hello")
    assert h.digest() == c.digest
    with pytest.raises(BadRequest):
        tus.parse_checksum("md5 " + base64.b64encode(b"x" * 16).decode())  # not offered
    with pytest.raises(BadRequest):
        tus.parse_checksum("sha256 " + base64.b64encode(digest).decode())  # wrong digest size
    st = state()
    got = tus.patch_start(st, patch_headers(0, **{"upload-checksum": "sha256 " + base64.b64encode(
        hashlib.sha256(b"").digest()).decode()}), now=1500.0)
    assert got is not None and got.algorithm == "sha256"
    assert wire_of(ChecksumMismatch("x")) == (460, "checksum_mismatch")


def test_method_override():
    assert tus.effective_method("POST", Headers([("x-http-method-override", "PATCH")])) == "PATCH"
    assert tus.effective_method("POST", Headers()) == "POST"
    assert tus.effective_method("GET", Headers([("x-http-method-override", "DELETE")])) == "GET"
    with pytest.raises(BadRequest):
        tus.effective_method("POST", Headers([("x-http-method-override", "PUT")]))


def test_answer_headers():
    st = state(metadata="filename YQ==", spooled=7)
    head = dict(tus.head_headers(st))
    assert head["upload-offset"] == "7" and head["upload-length"] == str(12 * MiB)
    assert head["cache-control"] == "no-store" and head["upload-metadata"] == "filename YQ=="
    assert head["upload-expires"].endswith("GMT")
    done = state(completed=1500.0)
    assert dict(tus.offset_headers(done))["upload-offset"] == str(12 * MiB)  # no parts kept once complete
    assert "upload-expires" not in dict(tus.offset_headers(done))
    opts = dict(tus.options_headers(999))
    assert opts["tus-version"] == "1.0.0" and opts["tus-max-size"] == "999"
    assert set(opts["tus-extension"].split(",")) == {"creation", "creation-with-upload", "termination",
                                                     "expiration", "checksum"}
    assert opts["tus-checksum-algorithm"] == "sha1,sha256"


def test_record_round_trip():
    st = state(parts=(Part(1, '"e1"', 5 * MiB), Part(2, '"e2"', 5 * MiB)), spooled=3, spool_gen=4)
    assert UploadState.from_record(st.to_record()) == st
    assert st.stored == 10 * MiB and st.offset == 10 * MiB + 3


def test_parts_cut_at_part_size_and_last_part():
    P = 5 * MiB
    assert tus.parts_to_cut(P - 1, P, final=False, stored_parts=0) == []
    assert tus.parts_to_cut(2 * P + 3, P, final=False, stored_parts=0) == [(0, P), (P, P)]
    assert tus.parts_to_cut(2 * P + 3, P, final=True, stored_parts=0) == [(0, P), (P, P), (2 * P, 3)]
    # A zero-length upload is one empty part; a finished spool of 0 after stored parts adds none.
    assert tus.parts_to_cut(0, P, final=True, stored_parts=0) == [(0, 0)]
    assert tus.parts_to_cut(0, P, final=True, stored_parts=2) == []


@pytest.mark.parametrize("name", tus.SINGLE_VALUED)
def test_a_one_valued_field_sent_twice_is_refused(name):
    tus.check_single_valued(Headers([("upload-checksum" if name != "upload-checksum" else "upload-length", "1"),
                                     (name, "1")]))  # once each: fine
    with pytest.raises(BadRequest, match=name):
        tus.check_single_valued(Headers([(name, "1"), ("tus-resumable", "1.0.0"), (name, "1")]))


@pytest.mark.parametrize("declared", ["\u00b2", "\u0663", "1\u00b2"])
def test_content_length_with_non_ascii_digits_is_not_a_number(declared):
    """str.isdigit() says yes to '²' and '٣'; int() then fails or reads them: never a 500."""
    state = UploadState(id="a" * 32, owner="o", length=10, metadata="", created=0.0, expires=100.0,
                        store_upload_id="s", key="uploads/x")
    headers = Headers([("content-type", tus.OFFSET_CONTENT_TYPE), ("upload-offset", "0"),
                       ("content-length", declared)])
    assert tus.patch_start(state, headers, 1.0) is None
    creation = Headers([("upload-length", "10"), ("content-length", declared)])
    assert tus.creation(creation, max_size=100, max_metadata_bytes=100) == (10, "", False)


@pytest.mark.parametrize("value", ["a YQ==\x1f", "a YQ==\x85", "\x1ca YQ==", "a YQ==\x0b,b", "a YQ==\x00",
                                   "a YQ==\x7f"])
def test_metadata_with_control_characters_is_refused(value):
    """str.strip() removes \\x1c-\\x1f, \\x0b, \\x85 around a valid pair: the raw header, which is
    stored and echoed in every HEAD, must be printable ASCII."""
    with pytest.raises(BadRequest, match="printable ASCII"):
        tus.parse_metadata(value, 4096)
    assert tus.parse_metadata("a YQ==,\tb , c Yg==", 4096) == {"a": b"a", "b": None, "c": b"b"}
