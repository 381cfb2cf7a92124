"""Classic HLS AES-128: the key URL beside the licence URL, and the encrypting sink (each file
whole, AES-128-CBC + PKCS#7 under its own IV, decrypting back to what was put)."""

from __future__ import annotations

import itertools

import pytest
from Crypto.Cipher import AES
from Crypto.Util.Padding import unpad

from headwater.drm.package.aes128 import Aes128SegmentSink, key_uri, padded_size

KID = bytes.fromhex("9eb4050de44b4802932e27d75083e266")
KEY = bytes.fromhex("166634c675823c235a4a9446fad52e4d")


class ListSink:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.events: list[str] = []

    def put(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def commit(self) -> None:
        self.events.append("commit")

    def abort(self) -> None:
        self.events.append("abort")


@pytest.mark.parametrize("licence,expected", [
    ("https://127.0.0.1:8443/licence", f"https://127.0.0.1:8443/keys/{KID.hex()}"),
    ("https://drm.example/tenant/licence?x=1", f"https://drm.example/tenant/keys/{KID.hex()}"),
    ("http://h/", f"http://h/keys/{KID.hex()}"),
])
def test_key_uri_is_beside_the_licence_url(licence, expected):
    assert key_uri(licence, KID) == expected


@pytest.mark.parametrize("bad", ["/licence", "ftp://h/licence", "licence", ""])
def test_key_uri_needs_an_absolute_http_url(bad):
    with pytest.raises(ValueError):
        key_uri(bad, KID)


def test_each_file_is_encrypted_whole_under_its_own_iv():
    counter = itertools.count(1)
    inner = ListSink()
    sink = Aes128SegmentSink(inner, KEY, random_bytes=lambda n: next(counter).to_bytes(n, "big"))
    files = {"video-1/init.mp4": b"\x00" * 32, "video-1/seg-1.m4s": b"abc" * 1000, "audio-2/seg-1.m4s": b""}
    for name, data in files.items():
        sink.put(name, data)
    assert len(set(sink.ivs.values())) == 3
    for name, data in files.items():
        sealed = inner.files[name]
        assert len(sealed) == padded_size(len(data)) and sealed[:len(data)] != data or not data
        plain = unpad(AES.new(KEY, AES.MODE_CBC, iv=sink.ivs[name]).decrypt(sealed), 16)
        assert plain == data
    sink.commit()
    sink.abort()
    assert inner.events == ["commit", "abort"]


def test_padding_is_one_to_sixteen_bytes():
    assert [padded_size(n) for n in (0, 1, 15, 16, 17)] == [16, 16, 16, 32, 32]


def test_bad_key_or_iv_source_is_refused():
    with pytest.raises(ValueError):
        Aes128SegmentSink(ListSink(), KEY[:15])
    sink = Aes128SegmentSink(ListSink(), KEY, random_bytes=lambda n: b"short")
    with pytest.raises(ValueError):
        sink.put("x", b"y")
