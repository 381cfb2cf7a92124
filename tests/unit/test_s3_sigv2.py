"""SigV2 verification: the S3 reference's signed examples, and requests signed by real botocore
(HmacV1Auth for headers, HmacV1QueryAuth for presigned URLs)."""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import HmacV1Auth, HmacV1QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from headwater.objstore.config import User
from headwater.objstore.s3 import errors as e
from headwater.objstore.s3 import sigv2
from headwater.objstore.s3.auth import authenticate

from headwater.http.types import Headers

# The reference's example credentials ("Signing and authenticating REST requests").
AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
USER = User(name="example", access_key=AK, secret_key=SK)


def lookup(ak: str) -> User | None:
    return USER if ak == AK else None


def at(date: str) -> float:
    return parsedate_to_datetime(date).timestamp()


# (method, Host, request target, headers, signature) from the reference's authentication
# examples, in the form they had with the johnsmith bucket (the signatures were computed for it).
REFERENCE = {
    "object-get": ("GET", "johnsmith.s3.amazonaws.com", "/photos/puppy.jpg",
                   {"Date": "Tue, 27 Mar 2007 19:36:42 +0000"}, "bWq2s1WEIj+Ydj0vQ697zp+IXMU="),
    "object-put": ("PUT", "johnsmith.s3.amazonaws.com", "/photos/puppy.jpg",
                   {"Content-Type": "image/jpeg", "Content-Length": "94328",
                    "Date": "Tue, 27 Mar 2007 21:15:45 +0000"}, "MyyxeRY7whkBe+bq8fHCL/2kKUg="),
    "list": ("GET", "johnsmith.s3.amazonaws.com", "/?prefix=photos&max-keys=50&marker=puppy",
             {"User-Agent": "Mozilla/5.0", "Date": "Tue, 27 Mar 2007 19:42:41 +0000"},
             "htDYFYduRNen8P9ZfE/s9SuKy0U="),
    "fetch-acl": ("GET", "johnsmith.s3.amazonaws.com", "/?acl",
                  {"Date": "Tue, 27 Mar 2007 19:44:46 +0000"}, "c2WLPFtWHVgbEmeEG93a4cG37dM="),
    "delete-x-amz-date": ("DELETE", "s3.amazonaws.com", "/johnsmith/photos/puppy.jpg",
                          {"User-Agent": "dotnet", "Date": "Tue, 27 Mar 2007 21:20:27 +0000",
                           "x-amz-date": "Tue, 27 Mar 2007 21:20:26 +0000"}, "lx3byBScXR6KzyMaifNkardMwNk="),
    "upload-metadata": ("PUT", "static.johnsmith.net.s3.amazonaws.com", "/db-backup.dat.gz",
                        {"User-Agent": "curl/7.15.5", "Date": "Tue, 27 Mar 2007 21:06:08 +0000",
                         "x-amz-acl": "public-read", "content-type": "application/x-download",
                         "Content-MD5": "4gJE4saaMU4BqNR0kLY+lw==",
                         "X-Amz-Meta-ReviewedBy": ["joe@johnsmith.net", "jane@johnsmith.net"],
                         "X-Amz-Meta-FileChecksum": "0x02661779", "X-Amz-Meta-ChecksumAlgorithm": "crc32",
                         "Content-Disposition": "attachment; filename=database.dat",
                         "Content-Encoding": "gzip", "Content-Length": "5913339"},
                        "ilyl83RwaSoYIEdixDQcA4OnAnc="),
    "list-all-my-buckets": ("GET", "s3.amazonaws.com", "/", {"Date": "Wed, 28 Mar 2007 01:29:59 +0000"},
                            "qGdzdERIC03wnaRNKh6OqZehG9s="),
    "unicode-keys": ("GET", "s3.amazonaws.com", "/dictionary/fran%C3%A7ais/pr%c3%a9f%c3%a8re",
                     {"Date": "Wed, 28 Mar 2007 01:49:49 +0000"}, "DNEZGsoieTZ92F3bUfSPQcbGmlM="),
}
BASE = ["s3.amazonaws.com"]


def _headers(host: str, fields: dict) -> Headers:
    h = Headers([("host", host)])
    for k, v in fields.items():
        for one in (v if isinstance(v, list) else [v]):
            h.add(k, one)
    return h


def check(method: str, host: str, target: str, fields: dict, *, now: float | None = None):
    from headwater.objstore.s3.names import host_bucket

    path, _, query = target.partition("?")
    h = _headers(host, fields)
    when = now if now is not None else at(h.get("x-amz-date") or h["date"])
    return authenticate(method=method, raw_path=path, raw_query=query, headers=h, lookup_user=lookup,
                        region="us-east-1", now=when, host_bucket=host_bucket(host, BASE))


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_examples(name):
    method, host, target, fields, signature = REFERENCE[name]
    got = check(method, host, target, {**fields, "Authorization": f"AWS {AK}:{signature}"})
    assert got.version == 2 and got.auth.user is USER and not got.auth.presigned


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_examples_tampered(name):
    method, host, target, fields, signature = REFERENCE[name]
    with pytest.raises(e.SignatureDoesNotMatch) as info:
        check("HEAD" if method == "GET" else "GET", host, target, {**fields, "Authorization": f"AWS {AK}:{signature}"})
    assert info.value.extra["StringToSign"].startswith("HEAD\n" if method == "GET" else "GET\n")


def test_reference_query_string_example():
    """GET /photos/puppy.jpg?AWSAccessKeyId=...&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D&Expires=1175139620"""
    target = f"/photos/puppy.jpg?AWSAccessKeyId={AK}&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D&Expires=1175139620"
    got = check("GET", "johnsmith.s3.amazonaws.com", target, {}, now=1175139620 - 60)
    assert got.version == 2 and got.auth.presigned
    with pytest.raises(e.AccessDenied, match="Request has expired") as info:
        check("GET", "johnsmith.s3.amazonaws.com", target, {}, now=1175139621)
    assert info.value.extra == {"Expires": "2007-03-29T03:40:20Z", "ServerTime": "2007-03-29T03:40:21Z"}


def test_string_to_sign_of_the_upload_example():
    fields = [("x-amz-acl", "public-read"), ("X-Amz-Meta-ReviewedBy", "joe@johnsmith.net"),
              ("X-Amz-Meta-ReviewedBy", "jane@johnsmith.net"), ("X-Amz-Meta-FileChecksum", "0x02661779"),
              ("X-Amz-Meta-ChecksumAlgorithm", "crc32"), ("Content-Type", "application/x-download")]
    assert sigv2.canonical_amz_headers(fields) == (
        b"x-amz-acl:public-read\nx-amz-meta-checksumalgorithm:crc32\nx-amz-meta-filechecksum:0x02661779\n"
        b"x-amz-meta-reviewedby:joe@johnsmith.net,jane@johnsmith.net\n")
    assert sigv2.canonical_resource("/k", "uploadId=abc&partNumber=2&max-parts=5&response-content-type=a%2Fb&uploads") \
        == b"/k?partNumber=2&response-content-type=a/b&uploadId=abc&uploads"
    assert sigv2.canonical_resource("/", "", host_bucket="b") == b"/b/"


def test_errors():
    get = REFERENCE["object-get"]
    date = get[3]["Date"]
    with pytest.raises(e.InvalidAccessKeyId):
        check("GET", get[1], get[2], {"Date": date, "Authorization": f"AWS NOSUCHKEY:{get[4]}"})
    with pytest.raises(e.RequestTimeTooSkewed):
        check("GET", get[1], get[2], {"Date": date, "Authorization": f"AWS {AK}:{get[4]}"}, now=at(date) + 901)
    with pytest.raises(e.AccessDenied, match="valid Date"):
        check("GET", get[1], get[2], {"Authorization": f"AWS {AK}:{get[4]}"}, now=0)
    with pytest.raises(e.InvalidRequest):
        check("GET", get[1], get[2], {"Date": date, "Authorization": "AWS no-colon"})
    for query in ("AWSAccessKeyId=" + AK, "Signature=x&Expires=1", f"AWSAccessKeyId={AK}&Signature=x"):
        with pytest.raises(e.AccessDenied, match="requires the Signature, Expires and AWSAccessKeyId"):
            check("GET", get[1], f"/k?{query}", {}, now=0)
    with pytest.raises(e.AccessDenied, match="Invalid date"):
        check("GET", get[1], f"/k?AWSAccessKeyId={AK}&Signature=x&Expires=soon", {}, now=0)
    with pytest.raises(e.InvalidArgument, match="Only one auth mechanism"):
        check("GET", get[1], f"/k?AWSAccessKeyId={AK}&Signature=x&Expires=9", {"Date": date,
                                                                               "Authorization": f"AWS {AK}:x"})


# --- botocore ----------------------------------------------------------------------------------

ENDPOINT = "http://127.0.0.1:9000"


def _botocore(method: str, path: str, *, headers=None, params=None, query_auth: int | None = None,
              auth_path: str | None = None) -> tuple[str, str, Headers]:
    # botocore builds the query into the URL before signing, %-encoded as below
    query = "&".join(k if v == "" and k in sigv2.SUBRESOURCES else f"{quote(k)}={quote(v, safe='')}"
                     for k, v in (params or {}).items())
    req = AWSRequest(method=method, url=ENDPOINT + path + ("?" + query if query else ""), headers=headers or {})
    if auth_path is not None:
        req.auth_path = auth_path
    creds = Credentials(AK, SK)
    if query_auth is not None:
        with mock.patch("botocore.auth.time.time", lambda: 1_700_000_000):
            HmacV1QueryAuth(creds, expires=query_auth).add_auth(req)
    else:
        HmacV1Auth(creds).add_auth(req)
    p = req.prepare()
    url = urlsplit(p.url)
    h = Headers([(k, v) for k, v in p.headers.items()])
    h.add("host", url.netloc)
    return url.path, url.query, h


def _verify(method: str, path: str, query: str, headers: Headers, now: float, host_bucket: str | None = None):
    return authenticate(method=method, raw_path=path, raw_query=query, headers=headers, lookup_user=lookup,
                        region="us-east-1", now=now, host_bucket=host_bucket)


@pytest.mark.parametrize("path,params,headers", [
    ("/bucket/key", None, None),
    ("/bucket/dir/caf%C3%A9%20%2B.txt", None, {"Content-Type": "text/plain", "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}),
    ("/bucket/k", {"uploadId": "u1", "partNumber": "3"}, {"x-amz-meta-b": "2", "X-Amz-Meta-A": " 1 "}),
    ("/bucket", {"list-type": "2", "prefix": "a b", "delete": ""}, None),
    ("/bucket/k", {"response-content-disposition": 'attachment; filename="x y.txt"'}, None),
    ("/bucket/k", None, {"x-amz-meta-title": "Café 日本"}),
])
def test_botocore_header_signatures(path, params, headers):
    raw_path, query, h = _botocore("PUT", path, params=params, headers=headers)
    if "x-amz-meta-title" in h:
        # the wire carries UTF-8; this server decodes header bytes as latin-1
        h = Headers([(k, v.encode("utf-8").decode("latin-1") if k == "x-amz-meta-title" else v) for k, v in h])
    now = at(h["date"])
    assert _verify("PUT", raw_path, query, h, now).version == 2
    with pytest.raises(e.SignatureDoesNotMatch):
        _verify("PUT", raw_path + "x", query, h, now)


def test_botocore_virtual_host_signature():
    raw_path, query, h = _botocore("GET", "/key", auth_path="/bucket/key")
    now = at(h["date"])
    assert _verify("GET", raw_path, query, h, now, host_bucket="bucket").version == 2
    with pytest.raises(e.SignatureDoesNotMatch):
        _verify("GET", raw_path, query, h, now)


def test_botocore_presigned_url_and_its_query_headers():
    raw_path, query, h = _botocore("PUT", "/bucket/k", query_auth=600,
                                   headers={"Content-Type": "text/plain", "x-amz-meta-who": "me"})
    assert "AWSAccessKeyId=" in query and "x-amz-meta-who=me" in query
    bare = Headers([("host", h["host"])])  # the client sends neither field as a header
    got = _verify("PUT", raw_path, query, bare, now=1_700_000_000)
    assert got.auth.presigned and dict(got.query_headers) == {"content-type": "text/plain", "x-amz-meta-who": "me"}
    assert _verify("PUT", raw_path, query, bare, now=1_700_000_600).version == 2
    with pytest.raises(e.AccessDenied, match="Request has expired"):
        _verify("PUT", raw_path, query, bare, now=1_700_000_601)
    # a header that contradicts the signed parameter breaks the signature
    with pytest.raises(e.SignatureDoesNotMatch):
        _verify("PUT", raw_path, query, Headers([("host", h["host"]), ("x-amz-meta-who", "you")]), now=1_700_000_000)
    with pytest.raises(e.SignatureDoesNotMatch):
        _verify("PUT", raw_path, query.replace("Expires=1700000600", "Expires=1700009999"), bare, now=1_700_000_000)


def test_botocore_path_style_bucket_request_signs_a_trailing_slash():
    """boto3 sends ``/bucket`` and signs ``/bucket/`` for bucket operations; both verify."""
    raw_path, query, h = _botocore("GET", "/bucket?list-type=2", auth_path="/bucket/")
    assert raw_path == "/bucket"
    assert _verify("GET", raw_path, query, h, at(h["date"])).version == 2
    raw_path, query, h = _botocore("GET", "/bucket/key", auth_path="/bucket/key/")
    with pytest.raises(e.SignatureDoesNotMatch):  # only the bucket's own path gains the slash
        _verify("GET", raw_path, query, h, at(h["date"]))


def test_empty_subresource_value_signed_bare_as_go_signers_do():
    """rclone's ``--s3-v2-auth`` (and MinIO's SigV2 signer) send CreateMultipartUpload as
    ``POST /bucket/k?uploads=`` (Go's url.Values writes every parameter with '=') and sign the
    sub-resource bare, ``/bucket/k?uploads``: the reference adds "its value if it has one". That
    verifies, and so does botocore's ``uploads=`` for the same query; a different resource does not."""
    date = "Fri, 04 Dec 2026 16:33:45 UTC"
    amz = "x-amz-meta-mtime:1796401991.90507655\n"
    for resource in ("/bucket/k?uploads", "/bucket/k?uploads="):
        sts = f"POST\n\napplication/octet-stream\n{date}\n{amz}{resource}".encode()
        h = _headers("127.0.0.1:9000", {"Date": date, "Content-Type": "application/octet-stream",
                                        "X-Amz-Meta-Mtime": "1796401991.90507655",
                                        "Authorization": f"AWS {AK}:{sigv2.sign(SK, sts)}"})
        assert _verify("POST", "/bucket/k", "uploads=", h, at(date)).version == 2
        with pytest.raises(e.SignatureDoesNotMatch):
            _verify("POST", "/bucket/k", "uploads=&uploadId=u1", h, at(date))
    # a bare name signed for an upload ID with a value is still refused
    sts = f"PUT\n\n\n{date}\n/bucket/k?partNumber=1&uploadId".encode()
    h = _headers("127.0.0.1:9000", {"Date": date, "Authorization": f"AWS {AK}:{sigv2.sign(SK, sts)}"})
    with pytest.raises(e.SignatureDoesNotMatch):
        _verify("PUT", "/bucket/k", "partNumber=1&uploadId=u1", h, at(date))
    assert sigv2.canonical_resource("/k", "uploads=&delete", empty_as_bare=True) == b"/k?delete&uploads"
