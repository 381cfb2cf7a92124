"""edge.compress: what is compressed, the variant's fields, the streaming encoders (sans-IO)."""

from __future__ import annotations

import gzip
import os

import brotli
import pytest

from headwater.edge.compress import (
    CompressionConfig,
    Encoder,
    compressed_headers,
    compressible,
    keep_weak_etag,
    wanted_encoding,
    with_vary,
    without_vary_on_encoding,
)
from headwater.http.types import Headers

CFG = CompressionConfig()


@pytest.mark.parametrize("status, headers, ok", [
    (200, [("content-type", "application/dash+xml"), ("content-length", "5000")], True),
    (200, [("content-type", "text/plain; charset=utf-8"), ("content-length", "5000")], True),
    (200, [("content-type", "application/vnd.apple.mpegurl")], True),  # length unknown
    (200, [("content-type", "video/mp4"), ("content-length", "5000")], False),
    (200, [("content-type", "application/json"), ("content-length", "999")], False),
    (200, [("content-type", "application/json"), ("content-length", str(11 * 1024 * 1024))], False),
    (200, [("content-type", "application/json"), ("content-encoding", "gzip")], False),
    (200, [("content-type", "application/json"), ("content-encoding", "identity")], True),
    (200, [("content-type", "application/json"), ("cache-control", "max-age=1, No-Transform")], False),
    (206, [("content-type", "application/json")], False),
    (404, [("content-type", "text/html")], False),
    (200, [], False),
])
def test_what_is_compressible(status, headers, ok):
    assert compressible(status, headers, CFG) is ok


def test_the_variant_fields_and_vary():
    out = compressed_headers([("etag", '"a"'), ("content-length", "10"), ("content-type", "text/css")], "br")
    assert out == [("etag", 'W/"a"'), ("content-type", "text/css"), ("content-encoding", "br")]
    assert compressed_headers([("etag", 'W/"a"')], "gzip")[0] == ("etag", 'W/"a"')
    assert keep_weak_etag([("etag", 'W/"a"')], [("etag", '"a"'), ("date", "x")]) == [("etag", 'W/"a"'), ("date", "x")]
    assert keep_weak_etag([("etag", 'W/"a"')], [("etag", '"b"')]) == [("etag", '"b"')]
    assert keep_weak_etag([("etag", '"a"')], [("etag", '"a"')]) == [("etag", '"a"')]
    h = [("vary", "Origin")]
    with_vary(h)
    assert h == [("vary", "Origin"), ("vary", "Accept-Encoding")]
    h = [("vary", "accept-encoding")]
    with_vary(h)
    assert h == [("vary", "accept-encoding")]
    assert without_vary_on_encoding([("vary", "Accept-Encoding, Origin"), ("a", "b")]) == [("vary", "Origin"), ("a", "b")]
    assert without_vary_on_encoding([("vary", "accept-encoding")]) == []


def test_range_requests_want_identity():
    assert wanted_encoding(Headers([("accept-encoding", "br")])) == "br"
    assert wanted_encoding(Headers([("accept-encoding", "br"), ("range", "bytes=0-1")])) == ""
    assert wanted_encoding(Headers([])) == ""


@pytest.mark.parametrize("encoding, decode", [("gzip", gzip.decompress), ("br", brotli.decompress)])
def test_streaming_encoders_round_trip_byte_exact(encoding, decode):
    body = os.urandom(3000) + b"<S t='1'/>" * 20000 + b""
    enc = Encoder(encoding)
    out = b"".join(enc.compress(body[i:i + 7001]) for i in range(0, len(body), 7001)) + enc.finish()
    assert decode(out) == body
    empty = Encoder(encoding)
    assert decode(empty.compress(b"") + empty.finish()) == b""
    with pytest.raises(ValueError):
        Encoder("zstd")
