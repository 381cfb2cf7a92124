"""aws-chunked decoding: AWS's documented example, a spec-following signer, botocore's framing."""

from __future__ import annotations

import hashlib
import hmac
import io

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
from headwater.objstore.config import User
from headwater.objstore.s3 import errors as e
from headwater.objstore.s3.checksums import checksum_b64
from headwater.objstore.s3.chunked import AwsChunkedDecoder
from headwater.objstore.s3.sigv4 import (
    EMPTY_SHA256,
    AuthResult,
    PayloadMode,
    authenticate,
    parse_amz_date,
    signing_key,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.http.types import Headers

AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
USER = User(name="example", access_key=AK, secret_key=SK)
DATE = "20130524T000000Z"
SCOPE = "20130524/us-east-1/s3/aws4_request"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"


def doc_auth() -> AuthResult:
    """Authenticate AWS's documented chunked PUT (sigv4-streaming, 'Example: PUT Object')."""
    h = Headers([
        ("Host", "s3.amazonaws.com"), ("x-amz-date", DATE),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("Authorization", f"AWS4-HMAC-SHA256 Credential={AK}/{SCOPE},SignedHeaders=content-encoding;"
                          "content-length;host;x-amz-content-sha256;x-amz-date;"
                          f"x-amz-decoded-content-length;x-amz-storage-class,Signature={SEED}"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        ("Content-Encoding", "aws-chunked"), ("x-amz-decoded-content-length", "66560"),
        ("Content-Length", "66824"),
    ])
    return authenticate(method="PUT", raw_path="/examplebucket/chunkObject.txt", raw_query="",
                        headers=h, lookup_user=lambda a: USER if a == AK else None,
                        region="us-east-1", now=parse_amz_date(DATE))


DOC_BODY = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
    + b"a" * 65536 + b"\r\n"
    + b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
    + b"a" * 1024 + b"\r\n"
    + b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n")


def decode(dec: AwsChunkedDecoder, body: bytes, cuts: list[int] | None = None) -> bytes:
    out = []
    points = sorted(set(c for c in (cuts or []) if 0 < c < len(body)))
    prev = 0
    for c in points + [len(body)]:
        out += dec.feed(body[prev:c])
        prev = c
    dec.finish()
    return b"".join(out)


# --- a signer written from the spec ------------------------------------------------------------

def sign_chunks(data: bytes, chunk: int, *, key: bytes, seed: str, trailer: dict[str, str] | None = None) -> bytes:
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    prev, out = seed, []
    for p in pieces:
        sts = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", DATE, SCOPE, prev, EMPTY_SHA256,
                         hashlib.sha256(p).hexdigest()))
        prev = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        out.append(b"%x;chunk-signature=%s\r\n" % (len(p), prev.encode()))
        if p or trailer is None:
            out.append(p + b"\r\n")
    if trailer is not None:
        canon = "".join(f"{k}:{v}\n" for k, v in sorted(trailer.items()))
        sts = "\n".join(("AWS4-HMAC-SHA256-TRAILER", DATE, SCOPE, prev,
                         hashlib.sha256(canon.encode()).hexdigest()))
        tsig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        out += [f"{k}:{v}\r\n".encode() for k, v in trailer.items()]
        out.append(f"x-amz-trailer-signature:{tsig}\r\n\r\n".encode())
    return b"".join(out)


def auth_for(mode: PayloadMode) -> AuthResult:
    return AuthResult(user=USER, access_key=AK, signing_key=signing_key(SK, DATE[:8], "us-east-1"),
                      seed_signature=SEED, amz_date=DATE, scope=SCOPE, content_sha256=mode.value)


def botocore_frame(data: bytes, chunk: int, checksum: bool = True) -> bytes:
    w = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum if checksum else None,
                          checksum_name="x-amz-checksum-crc32", chunk_size=chunk)
    return b"".join(iter(lambda: w.read(777), b""))


# --- tests -------------------------------------------------------------------------------------

def test_aws_documented_example():
    r = doc_auth()
    assert r.mode is PayloadMode.STREAMING_SIGNED
    assert len(DOC_BODY) == 66824
    assert decode(AwsChunkedDecoder(r, r.mode, decoded_length=66560), DOC_BODY) == b"a" * 66560
    # the spec signer reproduces the documented chunk signatures
    assert sign_chunks(b"a" * 66560, 65536, key=r.signing_key, seed=SEED) == DOC_BODY


def test_aws_example_one_byte_feeds():
    r = doc_auth()
    dec = AwsChunkedDecoder(r, r.mode, decoded_length=66560)
    out = []
    for i in range(len(DOC_BODY)):
        out += dec.feed(DOC_BODY[i:i + 1])
    dec.finish()
    assert b"".join(out) == b"a" * 66560


@pytest.mark.parametrize("where", [100, 65600, 66700])
def test_tampered_chunk_rejected(where):
    r = doc_auth()
    body = bytearray(DOC_BODY)
    body[where] ^= 1
    with pytest.raises((e.SignatureDoesNotMatch, e.IncompleteBody)):
        decode(AwsChunkedDecoder(r, r.mode), bytes(body))


def test_reordered_chunks_rejected():
    r = auth_for(PayloadMode.STREAMING_SIGNED)
    body = sign_chunks(b"x" * 100 + b"y" * 100, 100, key=r.signing_key, seed=SEED)
    first_end = body.index(b"\r\n", body.index(b"\r\n") + 2) + 2
    second_end = body.index(b"\r\n", body.index(b"\r\n", first_end) + 2) + 2
    swapped = body[first_end:second_end] + body[:first_end] + body[second_end:]
    with pytest.raises(e.SignatureDoesNotMatch):
        decode(AwsChunkedDecoder(r, r.mode), swapped)


def test_decoded_length_mismatch_and_truncation():
    r = doc_auth()
    with pytest.raises(e.IncompleteBody):
        decode(AwsChunkedDecoder(r, r.mode, decoded_length=66561), DOC_BODY)
    with pytest.raises(e.IncompleteBody):
        decode(AwsChunkedDecoder(r, r.mode, decoded_length=1000), DOC_BODY)
    with pytest.raises(e.IncompleteBody):
        decode(AwsChunkedDecoder(r, r.mode), DOC_BODY[:-2])
    with pytest.raises(e.IncompleteBody):
        decode(AwsChunkedDecoder(r, r.mode), DOC_BODY[:60000])


def test_malformed_framing():
    mode = PayloadMode.STREAMING_UNSIGNED_TRAILER
    for bad in [b"zz\r\nab\r\n0\r\n\r\n", b"2\r\nabc\r\n0\r\n\r\n", b"2\nab\r\n0\r\n\r\n",
                b"2;chunk-signature=00\r\nab\r\n0\r\n\r\n" + b"x" * 10,
                b"0\r\nno-colon-here\r\n\r\n", b"0\r\n\r\nextra"]:
        with pytest.raises((e.IncompleteBody, e.InvalidRequest)):
            decode(AwsChunkedDecoder(None, mode), bad)


def test_signed_requires_chunk_signature():
    r = auth_for(PayloadMode.STREAMING_SIGNED)
    with pytest.raises(e.IncompleteBody):
        decode(AwsChunkedDecoder(r, r.mode), b"1\r\na\r\n0\r\n\r\n")


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), chunk=st.integers(1, 1100),
       cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_signed_roundtrip_random_splits(data, chunk, cuts):
    r = auth_for(PayloadMode.STREAMING_SIGNED)
    body = sign_chunks(data, chunk, key=r.signing_key, seed=SEED)
    assert decode(AwsChunkedDecoder(r, r.mode, decoded_length=len(data)), body, cuts) == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), chunk=st.integers(1, 1100),
       cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_signed_trailer_roundtrip(data, chunk, cuts):
    r = auth_for(PayloadMode.STREAMING_SIGNED_TRAILER)
    crc = checksum_b64("crc32c", data)
    body = sign_chunks(data, chunk, key=r.signing_key, seed=SEED, trailer={"x-amz-checksum-crc32c": crc})
    dec = AwsChunkedDecoder(r, r.mode, decoded_length=len(data))
    assert decode(dec, body, cuts) == data
    assert dec.checksums == {"crc32c": crc}


def test_signed_trailer_tampered():
    r = auth_for(PayloadMode.STREAMING_SIGNED_TRAILER)
    body = sign_chunks(b"hello", 5, key=r.signing_key, seed=SEED,
                       trailer={"x-amz-checksum-crc32": checksum_b64("crc32", b"hello")})
    bad = body.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-crc32: ").replace(
        checksum_b64("crc32", b"hello").encode(), checksum_b64("crc32", b"hellp").encode())
    with pytest.raises(e.SignatureDoesNotMatch):
        decode(AwsChunkedDecoder(r, r.mode), bad)
    nosig = body[:body.index(b"x-amz-trailer-signature")] + b"\r\n"
    with pytest.raises(e.SignatureDoesNotMatch):
        decode(AwsChunkedDecoder(r, r.mode), nosig)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), chunk=st.integers(1, 2000),
       cuts=st.lists(st.integers(0, 6000), max_size=12), checksum=st.booleans())
def test_botocore_unsigned_trailer_framing(data, chunk, cuts, checksum):
    body = botocore_frame(data, chunk, checksum)
    dec = AwsChunkedDecoder(None, PayloadMode.STREAMING_UNSIGNED_TRAILER, decoded_length=len(data))
    assert decode(dec, body, cuts) == data
    assert dec.checksums == ({"crc32": checksum_b64("crc32", data)} if checksum else {})


def test_large_body_is_linear():
    data = bytes(range(256)) * 4096 * 8       # 8 MiB
    body = botocore_frame(data, 64 * 1024)
    dec = AwsChunkedDecoder(None, PayloadMode.STREAMING_UNSIGNED_TRAILER, decoded_length=len(data))
    n = 0
    for i in range(0, len(body), 65536 + 7):
        n += sum(len(p) for p in dec.feed(body[i:i + 65536 + 7]))
    dec.finish()
    assert n == len(data)


def test_constructor_checks():
    with pytest.raises(ValueError):
        AwsChunkedDecoder(None, PayloadMode.STREAMING_SIGNED)
    with pytest.raises(ValueError):
        AwsChunkedDecoder(None, PayloadMode.UNSIGNED)
