"""The kernel's SigV4 signer against botocore's, for the requests the shield and the packager send."""

from __future__ import annotations

import hashlib

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from headwater.sigv4 import canonical_path, sign_request

NOW = 1_700_000_000.0


@pytest.mark.parametrize("method,path,query,extra,body", [
    ("GET", "/videos/titles/1/seg-00042.m4s", "", (), b""),
    ("GET", "/videos/a%20b/c+d/%E2%82%AC.mpd", "", (), b""),
    ("GET", "/videos/x", "versionId=3&a=b%2Fc", (), b""),
    ("GET", "/videos/x", "", (("range", "bytes=0-99"), ("if-none-match", '"abc"')), b""),
    ("PUT", "/videos/titles/1/init.mp4", "", (("content-type", "video/mp4"),), b"\x00\x01segment"),
])
def test_signature_matches_botocore(monkeypatch, method, path, query, extra, body):
    ours = dict(sign_request(method, "127.0.0.1:9000", path, query, access_key="AKID", secret_key="secret-key-1",
                             region="us-east-1", now=NOW, extra_headers=extra,
                             payload_sha256=hashlib.sha256(body).hexdigest()))
    # The shield sends the path in its canonical form, which botocore signs as it is.
    url = f"http://127.0.0.1:9000{canonical_path(path)}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers={"x-amz-content-sha256": ours["x-amz-content-sha256"],
                                                         **dict(extra)})
    import datetime

    import botocore.auth as auth

    monkeypatch.setattr(auth, "get_current_datetime", lambda remove_tzinfo=True: datetime.datetime(2023, 11, 14, 22, 13, 20))
    S3SigV4Auth(Credentials("AKID", "secret-key-1"), "s3", "us-east-1").add_auth(request)
    assert request.headers["X-Amz-Date"] == ours["x-amz-date"]
    theirs = request.headers["Authorization"]
    assert theirs == ours["authorization"]
