"""Attacks on the S3 gateway replayed over real sockets: each test sends the hostile request the
way a client would (boto3 presigned URLs with httpx or curl, signed raw requests, a raw socket),
checks the status and S3 error code, and checks that nothing changed in the store.

- presigned URLs carrying x-amz-* headers they do not sign (HeadersNotSigned), while the URLs
  boto3 makes keep working;
- response-content-* overrides holding CR/LF/NUL (header injection);
- XML request bodies with DTDs and entities, in UTF-8, UTF-16 and UTF-32;
- keys and listing parameters holding characters XML 1.0 cannot carry.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import urllib.parse
import xml.etree.ElementTree as ET

import botocore.exceptions
import httpx
import pytest

from tests.cluster import client_error, sign_headers, signed_request, xml_error

CLUSTER_OPTIONS = dict(stripe_size="64KiB", inline_max_size="4KiB", min_part_size="100KiB", k=2, m=1, storage_nodes=3,
                       metadata_nodes=1)
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
NOT_SIGNED = "There were headers present in the request which were not signed"


def md5_b64(b: bytes) -> str:
    return base64.b64encode(hashlib.md5(b).digest()).decode()


def keys_of(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def missing(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as e:
        return client_error(e)[0] == 404
    return False


@pytest.fixture
def secret(s3, bucket):
    """Another bucket of alice's holding an object that a PUT URL must not reach."""
    other = bucket + "-secret"
    s3.create_bucket(Bucket=other)
    s3.put_object(Bucket=other, Key="secret", Body=b"the secret")
    return other


# --- 1. presigned URLs and unsigned x-amz-* headers ---------------------------------------------

@pytest.mark.parametrize("extra", [
    {"x-amz-copy-source": "/{secret}/secret"},
    {"x-amz-copy-source": "/{secret}/secret", "x-amz-metadata-directive": "REPLACE"},
    {"x-amz-meta-owner": "mallory"},
    {"x-amz-date": "20260101T000000Z"},
    {"x-amz-security-token": "forged"},
], ids=["copy-source", "copy-source+directive", "meta", "date", "security-token"])
def test_presigned_put_refuses_unsigned_amz_headers(s3, bucket, secret, extra):
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "upload"}, ExpiresIn=300)
    headers = {k: v.format(secret=secret) for k, v in extra.items()}
    r = httpx.put(url, content=b"x", headers=headers)
    err = xml_error(r)
    assert (r.status_code, err["Code"], err["Message"]) == (403, "AccessDenied", NOT_SIGNED)
    assert err["HeadersNotSigned"] == ", ".join(sorted(extra))
    assert missing(s3, bucket, "upload") and keys_of(s3, bucket) == []
    assert s3.get_object(Bucket=secret, Key="secret")["Body"].read() == b"the secret"


def test_presigned_get_and_head_refuse_unsigned_amz_headers(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=300)
    r = httpx.get(url, headers={"x-amz-checksum-mode": "ENABLED"})
    assert (r.status_code, xml_error(r)["Code"]) == (403, "AccessDenied")
    assert xml_error(r)["HeadersNotSigned"] == "x-amz-checksum-mode"
    assert httpx.get(url).content == b"body"


def test_presigned_curl_with_unsigned_copy_source(s3, bucket, secret):
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "via-curl"}, ExpiresIn=300)
    out = subprocess.run(["curl", "-sS", "-X", "PUT", "--data-binary", "x", "-H",
                          f"x-amz-copy-source: /{secret}/secret", "-w", "\n%{http_code}", url],
                         capture_output=True, timeout=30, check=True).stdout.decode()
    body, status = out.rsplit("\n", 1)
    assert status == "403" and "<Code>AccessDenied</Code>" in body and "<HeadersNotSigned>x-amz-copy-source<" in body
    assert missing(s3, bucket, "via-curl")


def test_presigned_urls_from_boto3_keep_working(s3, bucket):
    """What real tools send with a presigned URL: nothing x-amz-* (httpx, curl), the headers the
    URL signs (content-type, x-amz-meta-*), and at most an unsigned x-amz-content-sha256."""
    put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "plain"}, ExpiresIn=300)
    assert httpx.put(put, content=b"one").status_code == 200
    subprocess.run(["curl", "-sSf", "-X", "PUT", "--data-binary", "two", put], check=True, timeout=30,
                   capture_output=True)
    assert s3.get_object(Bucket=bucket, Key="plain")["Body"].read() == b"two"

    meta = s3.generate_presigned_url("put_object", Params={
        "Bucket": bucket, "Key": "meta", "ContentType": "text/x-signed", "Metadata": {"owner": "alice"}},
        ExpiresIn=300)
    r = httpx.put(meta, content=b"three", headers={"content-type": "text/x-signed", "x-amz-meta-owner": "alice"})
    assert r.status_code == 200, r.text
    head = s3.head_object(Bucket=bucket, Key="meta")
    assert head["ContentType"] == "text/x-signed" and head["Metadata"] == {"owner": "alice"}

    # an unsigned x-amz-content-sha256 passes (as on S3) but is not believed: a streaming value
    # does not turn the body into aws-chunked, a wrong digest does not fail it
    for value in ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "0" * 64):
        r = httpx.put(put, content=b"four", headers={"x-amz-content-sha256": value})
        assert r.status_code == 200, (value, r.text)
        assert s3.get_object(Bucket=bucket, Key="plain")["Body"].read() == b"four"

    get = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "meta"}, ExpiresIn=300)
    assert httpx.get(get).content == b"three"
    out = subprocess.run(["curl", "-sSf", get], check=True, timeout=30, capture_output=True).stdout
    assert out == b"three"


# --- 2. response-content-* and header injection --------------------------------------------------

@pytest.mark.parametrize("param", ["ResponseContentDisposition", "ResponseContentType", "ResponseCacheControl",
                                   "ResponseContentLanguage", "ResponseContentEncoding", "ResponseExpires"])
@pytest.mark.parametrize("bad", ["a\r\nSet-Cookie: session=stolen", "a\nb", "a\rb", "a\x00b"],
                         ids=["crlf", "lf", "cr", "nul"])
def test_response_overrides_with_control_characters_are_400(cluster, s3, bucket, param, bad):
    s3.put_object(Bucket=bucket, Key="k", Body=b"body", ContentType="text/plain")
    if param == "ResponseExpires":
        # botocore types ResponseExpires as a timestamp: a signed request carries the raw value
        r = signed_request(cluster, "GET", f"/{bucket}/k", query="response-expires=" + urllib.parse.quote(bad, safe=""))
    else:
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k", param: bad},
                                        ExpiresIn=300)
        r = httpx.get(url)
    err = xml_error(r)
    assert (r.status_code, err["Code"]) == (400, "InvalidArgument"), r.text
    assert err["ArgumentName"].startswith("response-")
    assert "set-cookie" not in r.headers
    assert s3.get_object(Bucket=bucket, Key="k")["ContentType"] == "text/plain"


def test_response_override_with_utf8_goes_out_as_utf8(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"body")
    disposition = 'attachment; filename="日本語\t.txt"'
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k",
                                                          "ResponseContentDisposition": disposition},
                                    ExpiresIn=300)
    r = httpx.get(url)
    assert r.status_code == 200
    raw = dict(r.headers.raw)[b"content-disposition"]
    assert raw == disposition.encode()


@pytest.mark.parametrize("value", [b"x\x00y", b"x\ry", b"x\x7fy\x01"])
def test_stored_headers_cannot_carry_control_characters(cluster, s3, bucket, value):
    """The other way into a response header: a value stored at PUT (x-amz-meta-*, Content-Type)
    and sent back on GET. The HTTP parsers refuse control characters on the way in."""
    url = f"{cluster.endpoint}/{bucket}/stored"
    hdrs = sign_headers(cluster, "PUT", url, body=b"b", headers={"x-amz-meta-a": "placeholder"})
    head = [f"PUT /{bucket}/stored HTTP/1.1"]
    for k, v in hdrs.items():
        head.append(f"{k}: {v}")
    raw = "\r\n".join(head).encode().replace(b"placeholder", value) + b"\r\ncontent-length: 1\r\n\r\nb"
    with socket.create_connection((cluster.host, cluster.gateway.port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = sock.recv(65536)
            if not got:
                break
            answer += got
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    assert 400 <= status < 500, answer[:300]
    assert missing(s3, bucket, "stored")


# --- 3. XML bodies with DTDs and entities --------------------------------------------------------

LAUGHS = ('<!DOCTYPE Delete [<!ENTITY a "lol">'
          + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
          + ']><Delete><Object><Key>&j;</Key></Object></Delete>')
XXE = '<!DOCTYPE Delete [<!ENTITY x SYSTEM "file:///etc/hostname">]><Delete><Object><Key>&x;</Key></Object></Delete>'
INTERNAL = '<!DOCTYPE Delete [<!ENTITY k "victim">]><Delete><Object><Key>&k;</Key></Object></Delete>'


def _variants(doc: str) -> list[tuple[str, bytes]]:
    out = []
    for name, codec, bom in [("utf-8", "utf-8", ""), ("utf-16+bom", "utf-16", ""),
                             ("utf-16le+decl", "utf-16-le", "\ufeff"), ("utf-16be", "utf-16-be", ""),
                             ("utf-32+bom", "utf-32", "")]:
        decl = f'<?xml version="1.0" encoding="{codec.upper().replace("-LE", "LE").replace("-BE", "BE")}"?>'
        out.append((name, (bom + decl + doc).encode(codec)))
    return out


@pytest.mark.parametrize("doc", [INTERNAL, LAUGHS, XXE], ids=["internal-entity", "billion-laughs", "xxe"])
def test_delete_objects_with_dtd_is_malformed_xml_in_every_encoding(cluster, s3, bucket, doc):
    s3.put_object(Bucket=bucket, Key="victim", Body=b"still here")
    for name, body in _variants(doc):
        r = signed_request(cluster, "POST", f"/{bucket}", query="delete=", body=body,
                           headers={"Content-MD5": md5_b64(body), "Content-Type": "application/xml"})
        assert (r.status_code, xml_error(r).get("Code")) == (400, "MalformedXML"), (name, r.text)
    assert keys_of(s3, bucket) == ["victim"]


def test_complete_multipart_with_dtd_is_malformed_xml(cluster, s3, bucket):
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=1, Body=b"part")["ETag"]
    doc = (f'<!DOCTYPE CompleteMultipartUpload [<!ENTITY e \'{etag}\'>]><CompleteMultipartUpload>'
           f"<Part><PartNumber>1</PartNumber><ETag>&e;</ETag></Part></CompleteMultipartUpload>")
    for name, body in _variants(doc):
        r = signed_request(cluster, "POST", f"/{bucket}/mp", query=f"uploadId={up}", body=body)
        assert (r.status_code, xml_error(r).get("Code")) == (400, "MalformedXML"), (name, r.text)
    assert missing(s3, bucket, "mp")
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=up)["Parts"]
    assert [p["PartNumber"] for p in parts] == [1]
    # the same document without the DTD, in UTF-16, completes
    body = ('<?xml version="1.0" encoding="UTF-16"?><CompleteMultipartUpload><Part><PartNumber>1</PartNumber>'
            f"<ETag>{etag}</ETag></Part></CompleteMultipartUpload>").encode("utf-16")
    r = signed_request(cluster, "POST", f"/{bucket}/mp", query=f"uploadId={up}", body=body)
    assert r.status_code == 200, r.text
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"part"


# --- 4. keys XML 1.0 cannot carry ----------------------------------------------------------------

@pytest.mark.parametrize("ch", ["\x00", "\x01", "\x1b", "\ufffe"], ids=["nul", "soh", "esc", "fffe"])
def test_listing_a_key_xml_cannot_carry(cluster, s3, bucket, ch):
    """Such a key is stored and addressable; boto3 (which lists with encoding-type=url) sees it;
    a listing without encoding-type=url that would hold it is 400 InvalidArgument, with a
    well-formed error document, never a 200 a strict parser refuses."""
    key = f"a{ch}b"
    s3.put_object(Bucket=bucket, Key=key, Body=b"odd")
    s3.put_object(Bucket=bucket, Key="z-plain", Body=b"plain")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"odd"
    assert keys_of(s3, bucket) == [key, "z-plain"]
    for query in ("list-type=2", "", "versions=", "list-type=2&delimiter=b", "list-type=2&prefix=a"):
        r = signed_request(cluster, "GET", f"/{bucket}", query=query)
        err = xml_error(r)  # parses: no forbidden character in the error either
        assert (r.status_code, err["Code"], err["ArgumentName"]) == (400, "InvalidArgument", "encoding-type"), query
        r = signed_request(cluster, "GET", f"/{bucket}", query="&".join(filter(None, [query, "encoding-type=url"])))
        assert r.status_code == 200
        root = ET.fromstring(r.content)
        listed = [urllib.parse.unquote_plus(k.text) for k in root.iter(f"{NS}Key")]
        listed += [urllib.parse.unquote_plus(p.text) for p in root.iter(f"{NS}Prefix") if p.text]
        assert key in listed or f"a{ch}" in "".join(listed), (query, r.text)
    # a page that does not reach the key lists normally
    r = signed_request(cluster, "GET", f"/{bucket}", query="list-type=2&prefix=z")
    assert r.status_code == 200 and ET.fromstring(r.content).findtext(f"{NS}Contents/{NS}Key") == "z-plain"
    # errors naming the key stay parseable
    r = signed_request(cluster, "GET", f"/{bucket}/" + urllib.parse.quote(f"no{ch}such"))
    assert (r.status_code, xml_error(r)["Code"]) == (404, "NoSuchKey")
    s3.delete_object(Bucket=bucket, Key=key)
    assert keys_of(s3, bucket) == ["z-plain"]


# --- 5. listing parameters come back as sent ----------------------------------------------------

@pytest.mark.parametrize("text", ["a\nb", "a\rb", "a\r\nb", "a\tb", " lead", "trail "],
                         ids=["lf", "cr", "crlf", "tab", "lead", "trail"])
def test_listing_parameters_come_back_as_sent(cluster, s3, bucket, text):
    s3.put_object(Bucket=bucket, Key=f"{text}/x", Body=b"")
    q = urllib.parse.quote
    r = signed_request(cluster, "GET", f"/{bucket}", query=f"prefix={q(text)}&delimiter=%2F&marker={q(text)}")
    assert r.status_code == 200
    root = ET.fromstring(r.content)
    assert root.findtext(f"{NS}Prefix") == text and root.findtext(f"{NS}Marker") == text
    assert root.findtext(f"{NS}CommonPrefixes/{NS}Prefix") == f"{text}/"
    r = signed_request(cluster, "GET", f"/{bucket}",
                       query=f"list-type=2&prefix={q(text)}&delimiter={q(text)}&start-after={q(text)}")
    root = ET.fromstring(r.content)
    assert [root.findtext(f"{NS}{n}") for n in ("Prefix", "Delimiter", "StartAfter")] == [text] * 3
    # boto3's view (encoding-type=url, decoded by botocore; V2, since botocore leaves V1's Prefix encoded)
    got = s3.list_objects_v2(Bucket=bucket, Prefix=text, Delimiter="/")
    assert got["Prefix"] == text and got["CommonPrefixes"] == [{"Prefix": f"{text}/"}]


# --- bodies that do not match what the request declared ---------------------------------------

def _wait_until(check, timeout_s: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("lie", ["x-amz-content-sha256", "content-md5"])
def test_a_large_body_that_is_not_what_was_signed_stores_nothing(cluster, s3, bucket, lie):
    """5 MiB (80 stripes, two write batches): the MD5 and SHA-256 run in the writer's digest
    lane, behind the stripes sent to the storage nodes, so the fragments are written before the
    mismatch is known; the PUT still fails with the right code, no object appears, and every
    fragment written for it is removed."""
    body = os.urandom(5 * 1024 * 1024 + 11)
    url = f"{cluster.endpoint}/{bucket}/lie"
    before = set(cluster.fragment_files())
    honest = f"{cluster.endpoint}/{bucket}/honest"
    good = httpx.put(honest, content=body, headers=sign_headers(cluster, "PUT", honest, body=body), timeout=60)
    assert good.status_code == 200, good.text
    assert set(cluster.fragment_files()) - before  # a PUT of this size leaves fragments: the check can fail

    before = set(cluster.fragment_files())
    other = body[:-1] + bytes([body[-1] ^ 1])  # the last byte differs
    if lie == "content-md5":
        headers = sign_headers(cluster, "PUT", url, body=body, headers={"content-md5": md5_b64(other)})
        code = "BadDigest"
    else:
        headers = sign_headers(cluster, "PUT", url, body=body,
                               payload_hash=hashlib.sha256(other).hexdigest())
        code = "XAmzContentSHA256Mismatch"
    r = httpx.put(url, content=body, headers=headers, timeout=60)
    assert (r.status_code, xml_error(r)["Code"]) == (400, code)
    assert keys_of(s3, bucket) == ["honest"]
    assert _wait_until(lambda: set(cluster.fragment_files()) <= before), \
        set(cluster.fragment_files()) - before
