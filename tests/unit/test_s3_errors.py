"""S3 error rendering."""

import xml.etree.ElementTree as ET

from headwater.objstore.s3 import errors as e


def test_every_error_has_code_and_status():
    for code, cls in e.ERRORS_BY_CODE.items():
        assert cls.code == code and issubclass(cls, e.S3Error)
        assert 300 <= cls.http_status <= 599
    assert e.NoSuchKey.http_status == 404 and e.InvalidRange.http_status == 416
    assert e.NotModified.http_status == 304 and e.SlowDown.http_status == 503


def test_error_document():
    err = e.NoSuchKey(Key="a<b&c", BucketName="bkt")
    status, headers, body = e.error_response(err, resource="/bkt/a<b&c", request_id="RID")
    assert status == 404 and ("content-type", "application/xml") in headers
    root = ET.fromstring(body)
    assert root.tag == "Error"
    assert [c.tag for c in root] == ["Code", "Message", "Key", "BucketName", "Resource", "RequestId"]
    assert root.findtext("Code") == "NoSuchKey" and root.findtext("Key") == "a<b&c"
    assert root.findtext("Resource") == "/bkt/a<b&c" and root.findtext("RequestId") == "RID"


def test_head_and_304_have_no_body():
    assert e.error_response(e.NoSuchKey(), resource="/b/k", request_id="r", head=True)[2] == b""
    st, hdrs, body = e.error_response(e.NotModified(headers=[("etag", '"x"')]), resource="/", request_id="r")
    assert (st, body) == (304, b"") and ("etag", '"x"') in hdrs


def test_resource_override_and_message():
    err = e.InvalidRange(ActualObjectSize=10, resource="/x")
    _, _, body = e.error_response(err, resource="/y", request_id="r")
    root = ET.fromstring(body)
    assert root.findtext("Resource") == "/x" and root.findtext("ActualObjectSize") == "10"
    assert str(e.AccessDenied("Request has expired")) == "Request has expired"
