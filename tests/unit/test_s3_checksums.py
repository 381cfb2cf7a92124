"""Checksums, ETags, composite checksums."""

import base64
import hashlib
import zlib

from hypothesis import given
from hypothesis import strategies as st
import pytest

from headwater.objstore.s3 import checksums as c
from headwater.objstore.s3 import errors as e


def test_known_values():
    # CRC check values for "123456789"
    assert c.new_checksum("crc32").__class__ is c.Crc32
    for algo, value in [("crc32", 0xCBF43926), ("crc32c", 0xE3069283)]:
        ck = c.new_checksum(algo)
        ck.update(b"123456789")
        assert ck.digest() == value.to_bytes(4, "big")
    ck = c.new_checksum("crc64nvme")
    ck.update(b"123456789")
    assert ck.digest() == (0xAE8B14860A799888).to_bytes(8, "big")
    assert c._crc32c_py(b"123456789") == 0xE3069283
    assert c.checksum_b64("sha256", b"") == base64.b64encode(hashlib.sha256().digest()).decode()


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_incremental_equals_oneshot(pieces):
    data = b"".join(pieces)
    for algo in ("crc32", "crc32c", "sha1", "sha256", "md5", "crc64nvme"):
        ck = c.new_checksum(algo)
        for p in pieces:
            ck.update(p)
        assert ck.b64() == c.checksum_b64(algo, data)
    assert c.Crc32c().__class__ and c._crc32c_py(data) == int.from_bytes(
        base64.b64decode(c.checksum_b64("crc32c", data)), "big")
    assert c.checksum_b64("crc32", data) == base64.b64encode(
        (zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "big")).decode()


def test_multipart_etag_and_composite():
    parts = [b"a" * 10, b"b" * 20]
    md5s = [hashlib.md5(p).digest() for p in parts]
    want = hashlib.md5(b"".join(md5s)).hexdigest() + "-2"
    assert c.multipart_etag(md5s) == want
    assert c.multipart_etag([f'"{m.hex()}"' for m in md5s]) == want
    crcs = [c.checksum_b64("crc32", p) for p in parts]
    raw = b"".join(base64.b64decode(x) for x in crcs)
    assert c.composite_checksum("crc32", crcs) == c.checksum_b64("crc32", raw) + "-2"


def test_checksum_set_verification():
    s = c.ChecksumSet(["CRC32", "sha256"])
    s.update(b"hello ")
    s.update(b"world")
    assert s.etag == hashlib.md5(b"hello world").hexdigest()
    s.verify_md5(c.content_md5_b64(b"hello world"))
    s.verify({"crc32": c.checksum_b64("crc32", b"hello world")})
    with pytest.raises(e.BadDigest):
        s.verify_md5(c.content_md5_b64(b"other"))
    with pytest.raises(e.BadDigest):
        s.verify({"sha256": c.checksum_b64("sha256", b"other")})
    with pytest.raises(e.InvalidDigest):
        s.verify_md5("not base64!")
    with pytest.raises(e.InvalidRequest):
        s.verify({"crc32c": "AAAAAA=="})
    assert c.unquote_etag('W/"abc"') == "abc" and c.quote_etag("abc") == '"abc"'
