"""Bucket/key validation, request routing, metadata headers."""

import re
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.http.types import Headers
from headwater.objstore.s3 import errors as e
from headwater.objstore.s3.errors import InvalidArgument
from headwater.objstore.s3.names import (RESPONSE_OVERRIDES, extract_metadata, extract_standard_headers, parse_copy_source,
                                         parse_query, parse_target, response_overrides,
                                         validate_bucket_name, validate_key)


@pytest.mark.parametrize("name", ["abc", "my-bucket.data", "a" * 63, "1bucket9", "b.1.2"])
def test_good_buckets(name):
    validate_bucket_name(name)


@pytest.mark.parametrize("name", ["ab", "a" * 64, "Abc", "-abc", "abc-", "a..b", "192.168.1.1",
                                  "xn--abc", "abc-s3alias", "a_b", "abc.", "sthree-x", ""])
def test_bad_buckets(name):
    with pytest.raises(e.InvalidBucketName):
        validate_bucket_name(name)


def test_keys():
    validate_key("a" * 1024)
    validate_key("é" * 512)
    with pytest.raises(e.KeyTooLongError):
        validate_key("é" * 513)
    with pytest.raises(e.InvalidArgument):
        validate_key("")


BASES = ["localhost", "s3.localhost", "s3.example.com"]


@pytest.mark.parametrize("host,path,query,expected", [
    ("localhost:9000", "/", "", (None, None)),
    ("localhost:9000", "/bkt", "", ("bkt", None)),
    ("localhost:9000", "/bkt/", "list-type=2", ("bkt", None)),
    ("127.0.0.1:9000", "/bkt/a%20b/c%2Fd", "", ("bkt", "a b/c/d")),
    ("127.0.0.1", "/bkt//lead", "", ("bkt", "/lead")),
    ("bkt.localhost:9000", "/", "", ("bkt", None)),
    ("bkt.s3.localhost", "/x/y+z", "", ("bkt", "x/y+z")),
    ("my.dotted.bkt.s3.example.com:443", "/%E2%9C%93", "", ("my.dotted.bkt", "✓")),
    ("s3.example.com", "/bkt/k", "", ("bkt", "k")),
    ("[::1]:9000", "/bkt/k", "", ("bkt", "k")),
    ("BKT.LOCALHOST", "/k", "", ("bkt", "k")),
    ("bkt.localhost", "/a%25b", "", ("bkt", "a%b")),
])
def test_parse_target(host, path, query, expected):
    t = parse_target(host, path, query, base_domains=BASES)
    assert (t.bucket, t.key) == expected


def test_query_and_invalid_uri():
    assert parse_query("uploads&prefix=a+b%2Bc&x=1&x=2") == {"uploads": [""], "prefix": ["a b+c"], "x": ["1", "2"]}
    with pytest.raises(e.InvalidURI):
        parse_target("h", "/b/%ff", "", base_domains=[])


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=50))
def test_key_decoded_exactly_once(key):
    t = parse_target("localhost", "/bkt/" + quote(key, safe="/~"), "", base_domains=BASES)
    assert t.bucket == "bkt" and t.key == key


def test_copy_source():
    assert parse_copy_source("src/a%20b/c") == ("src", "a b/c", None)
    assert parse_copy_source("/src/k?versionId=v1") == ("src", "k", "v1")
    with pytest.raises(e.InvalidArgument):
        parse_copy_source("onlybucket")


def test_metadata_and_standard_headers():
    h = Headers([("x-amz-meta-Color", "blue"), ("x-amz-meta-color", "red"), ("content-type", "text/plain"),
                 ("content-encoding", "gzip,aws-chunked"), ("cache-control", "no-cache"), ("x-other", "1")])
    assert extract_metadata(h) == {"color": "blue,red"}
    assert extract_standard_headers(h) == {"content-type": "text/plain", "content-encoding": "gzip",
                                           "cache-control": "no-cache"}
    assert "content-encoding" not in extract_standard_headers(Headers([("content-encoding", "aws-chunked")]))
    with pytest.raises(e.MetadataTooLarge):
        extract_metadata(Headers([("x-amz-meta-big", "x" * 2046)]))
    extract_metadata(Headers([("x-amz-meta-big", "x" * 2045)]))
    assert response_overrides({"response-content-type": ["a/b"], "other": ["x"]}) == {"content-type": "a/b"}


@pytest.mark.parametrize("param", sorted(RESPONSE_OVERRIDES))
@pytest.mark.parametrize("bad", ["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "a\x00b", "a\x7fb", "\x1b[31m"])
def test_response_overrides_refuse_control_characters(param, bad):
    with pytest.raises(InvalidArgument) as info:
        response_overrides({param: [bad]})
    assert info.value.extra["ArgumentName"] == param
    assert not re.search(r"[\x00-\x1f]", info.value.extra["ArgumentValue"])


def test_response_overrides_send_utf8_bytes():
    got = response_overrides({"response-content-disposition": ['attachment; filename="日本\t.txt"']})
    assert got["content-disposition"].encode("latin-1") == 'attachment; filename="日本\t.txt"'.encode()


@pytest.mark.parametrize("sent,stored", [
    ("deflate, gzip", "deflate, gzip"), ("deflate,gzip", "deflate,gzip"), ("gzip", "gzip"),
    ("aws-chunked", ""), ("aws-chunked,gzip", "gzip"), ("aws-chunked, gzip", "gzip"),
    ("gzip, aws-chunked", "gzip"), ("deflate, AWS-Chunked, gzip", "deflate, gzip"),
    ("br ,  gzip", "br ,  gzip"),
])
def test_content_encoding_is_stored_as_sent_less_aws_chunked(sent, stored):
    from headwater.objstore.s3.names import without_aws_chunked

    assert without_aws_chunked(sent) == stored
    got = extract_standard_headers(Headers([("content-encoding", sent)]))
    assert got == ({"content-encoding": stored} if stored else {})


def test_metadata_values_out():
    """ASCII as stored; anything else RFC 2047 encoded, decodable back to the sender's text."""
    from email.header import decode_header, make_header

    from headwater.objstore.s3.names import metadata_value_out

    def wire(text: str) -> str:  # how the HTTP core hands over UTF-8 bytes
        return text.encode("utf-8").decode("latin-1")

    assert metadata_value_out("plain ascii =?x?= ") == "plain ascii =?x?= "
    assert metadata_value_out(wire("Café")) == "=?UTF-8?B?Q2Fmw6k=?="
    assert metadata_value_out("Caf\xe9") == "=?UTF-8?B?Q2Fmw6k=?="  # latin-1 bytes, not UTF-8
    long = "日本語のタイトル — " * 8
    out = metadata_value_out(wire(long))
    assert out.isascii() and all(len(w) <= 75 for w in out.split(" "))
    assert str(make_header(decode_header(out))) == long


@pytest.mark.parametrize("value, ok", [
    ("/", True), ("/a/b.html", True), ("http://x.test/", True), ("https://x.test/?q=1", True),
    ("/" + "a" * 2047, True), ("/" + "a" * 2048, False), ("", False), ("a.html", False),
    ("javascript:alert(1)", False), ("ftp://x.test/", False),
])
def test_website_redirect_location_is_a_standard_header_with_s3s_rules(value, ok):
    h = Headers([("x-amz-website-redirect-location", value)])
    if ok:
        assert extract_standard_headers(h) == {"x-amz-website-redirect-location": value}
    else:
        with pytest.raises(e.InvalidArgument):
            extract_standard_headers(h)
