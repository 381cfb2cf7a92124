"""POST Object's pieces, sans-IO: the streaming multipart/form-data reader, and the POST policy
checks with policies signed by real signers (minio-py's PostPolicy, botocore's presigned POST)."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from minio.credentials import Credentials
from minio.datatypes import PostPolicy
from headwater.objstore.config import User
from headwater.objstore.s3 import errors as e
from headwater.objstore.s3 import formdata, postpolicy

AK, SK = "AKIDALICE0000000", "alice-secret-key-0123456789"
USER = User(name="alice", access_key=AK, secret_key=SK)
REGION = "us-east-1"


def lookup(ak: str) -> User | None:
    return USER if ak == AK else None


# --- the form reader -----------------------------------------------------------------------------

def encode(fields: dict[str, str], file: bytes, filename: str = "a.bin") -> tuple[str, bytes]:
    """A body as httpx (like a browser) writes it: (Content-Type, bytes)."""
    req = httpx.Request("POST", "http://h/b", data=fields, files={"file": (filename, file, "video/mp4")})
    return req.headers["content-type"], req.read()


def read(content_type: str, body: bytes, sizes: list[int]) -> list[tuple[str, str | None, str | None, bytes]]:
    """(name, filename, content type, bytes) per part, feeding ``body`` in pieces of ``sizes``."""
    boundary = formdata.boundary_of(content_type)
    assert boundary is not None
    reader = formdata.FormReader(boundary)
    events: list[formdata.FormEvent] = []
    at, i = 0, 0
    while at < len(body):
        n = sizes[i % len(sizes)] if sizes else len(body)
        events += reader.feed(body[at:at + n])
        at, i = at + n, i + 1
    reader.finish()
    parts: list = []
    for ev in events:
        if isinstance(ev, formdata.PartStarted):
            parts.append([ev.name, ev.filename, ev.content_type, b""])
        elif isinstance(ev, formdata.PartData):
            parts[-1][3] += ev.data
    return [tuple(p) for p in parts]


@given(file=st.binary(max_size=3000), sizes=st.lists(st.integers(1, 200), max_size=5),
       value=st.text(max_size=40))
def test_reader_gives_every_part_back_however_the_body_is_split(file, sizes, value):
    ctype, body = encode({"key": "up/${filename}", "x-amz-meta-note": value}, file, filename="clip ü.mp4")
    assert read(ctype, body, sizes) == [("key", None, None, b"up/${filename}"),
                                        ("x-amz-meta-note", None, None, value.encode()),
                                        ("file", "clip ü.mp4", "video/mp4", file)]


def test_reader_file_holding_boundary_lookalikes():
    ctype, body = encode({"key": "k"}, b"\r\n--\r\n--x\r\n" * 100)
    boundary = formdata.boundary_of(ctype)
    assert read(ctype, body, [7])[1][3] == b"\r\n--\r\n--x\r\n" * 100
    # the boundary itself, less its last byte, inside the file
    near = b"\r\n--" + boundary.encode()[:-1]
    ctype2 = f"multipart/form-data; boundary={boundary}"
    body2 = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n").encode() \
        + near + f"\r\n--{boundary}--\r\n".encode()
    assert read(ctype2, body2, [1]) == [("file", "f", None, near)]


def test_reader_preamble_padding_and_epilogue():
    body = (b"ignored preamble\r\n--XyZ  \r\nContent-Disposition: form-data; name=key\r\n\r\nv\r\n"
            b"--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"\"\r\n\r\n\r\n--XyZ--\r\nepilogue")
    assert read('multipart/form-data; boundary="XyZ"', body, [3]) == [("key", None, None, b"v"),
                                                                       ("file", "", None, b"")]


@pytest.mark.parametrize("body", [
    b"--B\r\nContent-Disposition: form-data; name=key\r\n\r\nv",            # no closing boundary
    b"--B\r\nContent-Type: text/plain\r\n\r\nv\r\n--B--",                   # no Content-Disposition
    b"--B\r\nContent-Disposition: form-data\r\n\r\nv\r\n--B--",             # no name
    b"--B junk\r\nContent-Disposition: form-data; name=k\r\n\r\nv\r\n--B--",  # text after a boundary
    b"no boundary anywhere",
])
def test_reader_refuses_malformed_bodies(body):
    with pytest.raises(e.MalformedPOSTRequest):
        reader = formdata.FormReader("B")
        reader.feed(body)
        reader.finish()


def test_reader_refuses_a_long_part_header_however_it_arrives():
    """MAX_PART_HEADER_BYTES holds when the header section comes whole in one feed, too."""
    body = (b"--B\r\nContent-Disposition: form-data; name=k\r\nX-Pad: " + b"p" * 200_000
            + b"\r\n\r\nv\r\n--B--\r\n")
    for size in (len(body), 1000):
        reader = formdata.FormReader("B")
        with pytest.raises(e.MalformedPOSTRequest):
            for at in range(0, len(body), size):
                reader.feed(body[at:at + size])


def test_reader_offsets_count_every_byte_before_a_part():
    """A part's offset is the body's bytes before its content, boundaries, headers and preamble
    included (S3's 20 KB before the file), and ``consumed`` what was read past, however fed."""
    body = (b"preamble\r\n--B\r\nContent-Disposition: form-data; name=\"\"\r\n\r\n\r\n"
            b"--B\r\nContent-Disposition: form-data; name=file\r\n\r\nDATA\r\n--B--\r\n")
    for size in (1, 5, len(body)):
        reader = formdata.FormReader("B")
        starts = []
        for at in range(0, len(body), size):
            starts += [ev.offset for ev in reader.feed(body[at:at + size]) if isinstance(ev, formdata.PartStarted)]
            assert reader.consumed <= at + size
        reader.finish()
        assert starts == [body.index(b"\r\n\r\n\r\n") + 4, body.index(b"DATA")]
        assert reader.consumed == len(body)


def test_boundary_of():
    assert formdata.boundary_of("multipart/form-data; boundary=abc") == "abc"
    assert formdata.boundary_of('Multipart/Form-Data; charset=utf-8; boundary="a b"') == "a b"
    assert formdata.boundary_of("application/x-www-form-urlencoded") is None
    assert formdata.boundary_of("multipart/form-data") is None
    assert formdata.boundary_of(None) is None


# --- the policy ----------------------------------------------------------------------------------

def minio_form(bucket: str = "media", *, expires: timedelta = timedelta(minutes=5), **equals: str) -> dict[str, str]:
    policy = PostPolicy(bucket, datetime.now(timezone.utc) + expires)
    policy.add_starts_with_condition("key", "up/")
    policy.add_content_length_range_condition(10, 1000)
    for name, value in equals.items():
        policy.add_equals_condition(name, value)
    return policy.form_data(Credentials(AK, SK), REGION)


def authorize(fields: dict[str, str], *, bucket: str = "media", filename: str | None = "f.mp4",
              now: float | None = None) -> postpolicy.PostAuthorization:
    return postpolicy.authorize({k.lower(): v for k, v in fields.items()}, bucket=bucket, filename=filename,
                                lookup_user=lookup, region=REGION, now=time.time() if now is None else now)


def test_minio_signed_policy():
    got = authorize({**minio_form(**{"Content-Type": "video/mp4"}), "key": "up/${filename}",
                     "Content-Type": "video/mp4"})
    assert (got.user, got.key, got.min_length, got.max_length) == (USER, "up/f.mp4", 10, 1000)
    postpolicy.check_length(got, 10, final=True)
    with pytest.raises(e.EntityTooSmall):
        postpolicy.check_length(got, 9, final=True)
    postpolicy.check_length(got, 9, final=False)  # still streaming
    with pytest.raises(e.EntityTooLarge):
        postpolicy.check_length(got, 1001, final=False)


def test_botocore_signed_policy():
    import boto3

    s3 = boto3.client("s3", region_name=REGION, aws_access_key_id=AK, aws_secret_access_key=SK,
                      endpoint_url="http://127.0.0.1:1")
    post = s3.generate_presigned_post("media", "up/${filename}", Fields={"success_action_status": "201"},
                                      Conditions=[{"success_action_status": "201"},
                                                  ["starts-with", "$Content-Type", "image/"]])
    fields = {**post["fields"], "Content-Type": "image/png, image/jpeg"}
    got = authorize(fields, filename=r"C:\photos\cat.png")
    assert got.key == "up/cat.png"
    with pytest.raises(e.AccessDenied, match="Policy Condition failed"):
        authorize({**fields, "Content-Type": "image/png, text/html"})


@pytest.mark.parametrize("change,error,message", [
    ({"key": "other/x"}, e.AccessDenied, r'Policy Condition failed: \["starts-with", "\$key", "up/"\]'),
    ({"acl": "public-read"}, e.AccessDenied, "Extra input fields: acl"),
    ({"x-amz-signature": "0" * 64}, e.SignatureDoesNotMatch, None),
    ({"x-amz-credential": f"{AK}/20000101/us-east-1/s3/aws4_request"}, e.InvalidArgument, None),  # not x-amz-date's day
    ({"x-amz-algorithm": "AWS4-HMAC-SHA1"}, e.InvalidArgument, None),
    ({"policy": None}, e.AccessDenied, None),
])
def test_policy_refusals(change, error, message):
    fields = {**minio_form(), "key": "up/x", "x-ignore-anything": "is fine"}
    for k, v in change.items():
        if v is None:
            fields.pop(k)
        else:
            fields[k] = v
    with pytest.raises(error, match=message):
        authorize(fields)


def test_unknown_key_and_other_bucket_and_expiry():
    form = minio_form()
    cred = form["x-amz-credential"].replace(AK, "AKIDNOBODY000000")
    with pytest.raises(e.InvalidAccessKeyId):
        authorize({**form, "x-amz-credential": cred, "key": "up/x"})
    with pytest.raises(e.AccessDenied, match=r"\$bucket"):
        authorize({**form, "key": "up/x"}, bucket="other")
    with pytest.raises(e.AccessDenied, match="Policy expired"):
        authorize({**form, "key": "up/x"}, now=time.time() + 600)
    with pytest.raises(e.InvalidArgument, match="key"):
        authorize(form)


def test_malformed_policies():
    def signed(document: object) -> dict[str, str]:
        import hashlib
        import hmac

        from headwater.objstore.s3 import sigv4

        form = minio_form()
        b64 = base64.b64encode(json.dumps(document).encode()).decode()
        key = sigv4.signing_key(SK, form["x-amz-date"][:8], REGION)
        return {**form, "policy": b64, "key": "up/x",
                "x-amz-signature": hmac.new(key, b64.encode(), hashlib.sha256).hexdigest()}

    later = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for document in ({"conditions": []}, {"expiration": "soon", "conditions": []}, {"expiration": later},
                     {"expiration": later, "conditions": [["ends-with", "$key", "x"]]},
                     {"expiration": later, "conditions": [["content-length-range", 5, 1]]}, [1]):
        with pytest.raises(e.InvalidPolicyDocument):
            authorize(signed(document))


def test_botocore_sigv2_signed_policy():
    """boto3 with ``signature_version="s3"`` signs the policy SigV2 (AWSAccessKeyId, signature)."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", region_name=REGION, aws_access_key_id=AK, aws_secret_access_key=SK,
                      endpoint_url="http://127.0.0.1:1", config=Config(signature_version="s3"))
    post = s3.generate_presigned_post("media", "up/x")
    assert "signature" in post["fields"] and "AWSAccessKeyId" in post["fields"]
    assert authorize(post["fields"]).key == "up/x"
    with pytest.raises(e.SignatureDoesNotMatch):
        authorize({**post["fields"], "signature": "AAAA"})


def test_hostile_signatures_are_refused_not_crashed():
    """A signature field holding non-ASCII characters (anyone can send one, with a known access
    key id) is a signature that does not match, for SigV4 and SigV2, not a TypeError (a 500)."""
    with pytest.raises(e.SignatureDoesNotMatch):
        authorize({**minio_form(), "key": "up/x", "x-amz-signature": "é" * 64})
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", region_name=REGION, aws_access_key_id=AK, aws_secret_access_key=SK,
                      endpoint_url="http://127.0.0.1:1", config=Config(signature_version="s3"))
    fields = s3.generate_presigned_post("media", "up/x")["fields"]
    with pytest.raises(e.SignatureDoesNotMatch):
        authorize({**fields, "signature": "\u00e9\u20ac"})


def test_hostile_policy_documents():
    """Signed but hostile documents: JSON nested deeper than the parser recurses, and a
    content-length-range of booleans, are InvalidPolicyDocument (400), not a 500 or a range."""
    import hashlib
    import hmac

    from headwater.objstore.s3 import sigv4

    form = minio_form()
    key = sigv4.signing_key(SK, form["x-amz-date"][:8], REGION)
    later = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for text in ("[" * 5000 + "]" * 5000,
                 '{"expiration": "%s", "conditions": %s}' % (later, "[" * 3000 + "]" * 3000),
                 json.dumps({"expiration": later, "conditions": [["content-length-range", True, True]]})):
        b64 = base64.b64encode(text.encode()).decode()
        fields = {**form, "policy": b64, "key": "up/x",
                  "x-amz-signature": hmac.new(key, b64.encode(), hashlib.sha256).hexdigest()}
        with pytest.raises(e.InvalidPolicyDocument):
            authorize(fields)


def test_expiration_without_an_offset_is_utc(monkeypatch):
    """An ``expiration`` without "Z" is UTC, as on S3, whatever the gateway's local time zone:
    read as local time, in UTC+9 a policy good for an hour had expired eight hours before."""
    import hashlib
    import hmac

    from headwater.objstore.s3 import sigv4

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        form = minio_form()
        key = sigv4.signing_key(SK, form["x-amz-date"][:8], REGION)
        in_an_hour = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
        document = {"expiration": in_an_hour, "conditions": [["starts-with", "$key", "up/"]] + [
            {name: form[name]} for name in ("bucket", "x-amz-algorithm", "x-amz-credential", "x-amz-date")
            if name in form]}
        b64 = base64.b64encode(json.dumps(document).encode()).decode()
        fields = {**form, "policy": b64, "key": "up/x",
                  "x-amz-signature": hmac.new(key, b64.encode(), hashlib.sha256).hexdigest()}
        fields.pop("bucket", None)
        assert authorize(fields).key == "up/x"
        with pytest.raises(e.AccessDenied, match="Policy expired"):
            authorize(fields, now=time.time() + 3601)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_header_names_from_form_fields():
    """A form field's name goes out as a header's (x-amz-meta-*) only if it is an HTTP token; the
    refusal shows a control character escaped (the error is an XML document, which cannot hold it)."""
    from headwater.objstore.s3 import names

    names.refuse_bad_header_name("x-amz-meta-Note_1")
    for bad in ("x-amz-meta-a b", "x-amz-meta-\u00fc", "x-amz-meta-a:b", "x-amz-meta-a\x01"):
        with pytest.raises(e.InvalidArgument) as info:
            names.refuse_bad_header_name(bad)
        assert "\x01" not in info.value.message + info.value.extra["ArgumentName"]


def test_key_conditions_see_the_key_after_filename_is_put_in():
    """The policy's ``$key`` conditions are held to the key with ``${filename}`` replaced, not to
    the field as sent: "this check takes place after the ${filename} variable is expanded" (the
    AWS SDK for Ruby's PresignedPost, on a starts-with condition on key). botocore's
    ``generate_presigned_post("b", "up/${filename}")`` signs ``["starts-with", "$key", "up/"]``,
    which passes either way; these two cases tell the readings apart."""
    got = authorize({**minio_form(key="up/cat.png"), "key": "up/${filename}"}, filename="cat.png")
    assert got.key == "up/cat.png"
    with pytest.raises(e.AccessDenied, match="Policy Condition failed"):
        authorize({**minio_form(key="up/${filename}"), "key": "up/${filename}"}, filename="cat.png")
