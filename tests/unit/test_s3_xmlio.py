"""S3 XML builders (checked with botocore's own response parser) and strict request parsers."""

import xml.etree.ElementTree as ET
from urllib.parse import unquote_plus

import pytest
from botocore.parsers import RestXMLParser
from botocore.session import get_session
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.objstore.s3 import errors as e
from headwater.objstore.s3 import xmlio as x

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MODEL = get_session().get_service_model("s3")
T = 1795322281.0  # 2026-11-22T04:38:01Z


def boto_parse(op: str, body: bytes, headers=None):
    return RestXMLParser().parse({"status_code": 200, "headers": headers or {}, "body": body},
                                 MODEL.operation_model(op).output_shape)


def tags(body: bytes) -> list[str]:
    return [c.tag.replace(NS, "") for c in ET.fromstring(body)]


def test_dates():
    assert x.iso8601(T) == "2026-11-22T04:38:01.000Z"
    assert x.iso8601(T + 0.25) == "2026-11-22T04:38:01.250Z"
    assert x.http_date(T) == "Sun, 22 Nov 2026 04:38:01 GMT"
    assert x.parse_http_date("Sun, 22 Nov 2026 04:38:01 GMT") == T
    assert x.parse_http_date("garbage") is None


@given(st.floats(min_value=0, max_value=253402300799.0))  # 1970 .. 9999-12-31 23:59:59
def test_http_date_is_what_email_utils_formats(ts):
    import email.utils
    assert x.http_date(ts) == email.utils.formatdate(int(ts), usegmt=True)
    assert x.parse_http_date(x.http_date(ts)) == int(ts)


def test_list_buckets():
    body = x.list_buckets(owner=x.Owner(id="o1", display_name="me"),
                          buckets=[x.BucketEntry(name="b1", created=T)])
    r = boto_parse("ListBuckets", body)
    assert r["Buckets"][0]["Name"] == "b1" and r["Owner"]["ID"] == "o1"
    assert r["Buckets"][0]["CreationDate"].timestamp() == T


def test_list_objects_v2_url_encoding():
    objs = [x.ObjectEntry(key="a b/ü+&<x>", last_modified=T, etag="abc", size=3)]
    body = x.list_objects_v2(bucket="bk", prefix="a b/", delimiter="/", contents=objs,
                             common_prefixes=["a b/sub dir/"], encoding_type="url", is_truncated=True,
                             next_continuation_token="tok", start_after="a b")
    assert tags(body)[:9] == ["Name", "Prefix", "NextContinuationToken", "KeyCount", "MaxKeys",
                              "Delimiter", "IsTruncated", "EncodingType", "StartAfter"]
    r = boto_parse("ListObjectsV2", body)
    assert r["KeyCount"] == 2 and r["IsTruncated"] and r["NextContinuationToken"] == "tok"
    raw = ET.fromstring(body)
    assert unquote_plus(raw.find(f"{NS}Contents/{NS}Key").text) == "a b/ü+&<x>"
    assert r["Contents"][0]["ETag"] == '"abc"' and r["Contents"][0]["Size"] == 3
    assert unquote_plus(r["CommonPrefixes"][0]["Prefix"]) == "a b/sub dir/"


def test_list_objects_v1_and_versions():
    objs = [x.ObjectEntry(key="k", last_modified=T, etag='"e"', size=1, owner=x.Owner(id="o"))]
    r = boto_parse("ListObjects", x.list_objects_v1(bucket="b", contents=objs, delimiter="/",
                                                    is_truncated=True, next_marker="k"))
    assert r["Contents"][0]["Owner"]["ID"] == "o" and r["NextMarker"] == "k"
    body = x.list_object_versions(bucket="b", versions=[x.VersionEntry(key="k", last_modified=T, etag="e", size=1)])
    r = boto_parse("ListObjectVersions", body)
    v = r["Versions"][0]
    assert v["VersionId"] == "null" and v["IsLatest"] is True and "DeleteMarkers" not in r


def test_small_documents():
    assert ET.fromstring(x.location_constraint("us-east-1")).text is None
    assert ET.fromstring(x.location_constraint("eu-west-1")).text == "eu-west-1"
    r = boto_parse("GetBucketVersioning", x.versioning_configuration())
    assert "Status" not in r and tags(x.versioning_configuration()) == []
    r = boto_parse("CreateMultipartUpload", x.initiate_multipart_upload(bucket="b", key="k", upload_id="u"))
    assert r["UploadId"] == "u"
    r = boto_parse("CompleteMultipartUpload", x.complete_multipart_upload(
        location="http://h/b/k", bucket="b", key="k", etag="abc-2", checksums={"crc32": "AAAAAA==-2"}))
    assert r["ETag"] == '"abc-2"' and r["ChecksumCRC32"] == "AAAAAA==-2"
    r = boto_parse("CopyObject", x.copy_object_result(etag="e", last_modified=T))
    assert r["CopyObjectResult"]["ETag"] == '"e"'
    r = boto_parse("UploadPartCopy", x.copy_part_result(etag="e", last_modified=T))
    assert r["CopyPartResult"]["ETag"] == '"e"'


def test_parts_and_uploads():
    parts = [x.PartEntry(part_number=i, last_modified=T, etag=f"e{i}", size=5) for i in (1, 2)]
    r = boto_parse("ListParts", x.list_parts(bucket="b", key="k", upload_id="u", owner=x.Owner(id="o"),
                                             parts=parts, max_parts=2, is_truncated=True))
    assert [p["PartNumber"] for p in r["Parts"]] == [1, 2] and r["NextPartNumberMarker"] == 2
    ups = [x.UploadEntry(key="k", upload_id="u1", initiated=T, owner=x.Owner(id="o"))]
    r = boto_parse("ListMultipartUploads", x.list_multipart_uploads(bucket="b", uploads=ups))
    assert r["Uploads"][0]["UploadId"] == "u1"


def test_delete_result_quiet():
    d = [x.DeletedEntry(key="a")]
    errs = [x.DeleteErrorEntry(key="b", code="AccessDenied", message="no")]
    r = boto_parse("DeleteObjects", x.delete_result(deleted=d, errors=errs))
    assert r["Deleted"] == [{"Key": "a"}] and r["Errors"][0]["Code"] == "AccessDenied"
    r = boto_parse("DeleteObjects", x.delete_result(deleted=d, errors=errs, quiet=True))
    assert "Deleted" not in r


FORBIDDEN = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1f", "\ufffe", "\uffff"]


@pytest.mark.parametrize("ch", FORBIDDEN)
def test_listing_refuses_what_xml_cannot_carry_unless_url_encoded(ch):
    """S3 itself writes ``&#x1;`` (which strict parsers reject); here a listing without
    encoding-type=url that would hold such a character is InvalidArgument instead."""
    entry = x.ObjectEntry(key=f"a{ch}b", last_modified=T, etag="e", size=0)
    builders = [
        lambda enc: x.list_objects_v2(bucket="b", contents=[entry], encoding_type=enc),
        lambda enc: x.list_objects_v2(bucket="b", prefix=f"p{ch}", encoding_type=enc),
        lambda enc: x.list_objects_v2(bucket="b", start_after=f"s{ch}", encoding_type=enc),
        lambda enc: x.list_objects_v1(bucket="b", delimiter=ch, encoding_type=enc),
        lambda enc: x.list_objects_v1(bucket="b", marker=f"m{ch}", common_prefixes=[f"c{ch}/"], encoding_type=enc),
        lambda enc: x.list_object_versions(bucket="b", key_marker=f"k{ch}", encoding_type=enc),
        lambda enc: x.list_multipart_uploads(bucket="b", uploads=[x.UploadEntry(key=f"u{ch}", upload_id="i",
                                                                                initiated=T)], encoding_type=enc),
    ]
    for build in builders:
        with pytest.raises(e.InvalidArgument) as info:
            build(None)
        assert info.value.extra["ArgumentName"] == "encoding-type"
        body = build("url")
        ET.fromstring(body)  # well-formed
        assert ch.encode() not in body


@pytest.mark.parametrize("ch", FORBIDDEN + ["\ud800"])
def test_other_documents_replace_what_xml_cannot_carry(ch):
    """Echoed text (an error's Key or Message, a multipart result's Key) is never made
    unparseable: the character becomes U+FFFD."""
    docs = [x.initiate_multipart_upload(bucket="b", key=f"k{ch}", upload_id="u"),
            x.list_objects_v2(bucket="b", continuation_token=f"t{ch}"),
            e.error_response(e.NoSuchKey(Key=f"k{ch}"), resource=f"/b/k{ch}", request_id="r")[2]]
    for body in docs:
        root = ET.fromstring(body)
        assert any(el.text and "\ufffd" in el.text for el in root.iter())


def test_tab_newline_and_cr_survive_a_parser():
    key = "a\tb\nc\rd\r\ne"
    body = x.list_objects_v1(bucket="b", prefix=key, delimiter="\n", marker="\r",
                             contents=[x.ObjectEntry(key=key, last_modified=T, etag="e", size=0)])
    assert b"&#xD;" in body
    root = ET.fromstring(body)
    assert root.findtext(f"{NS}Prefix") == key and root.findtext(f"{NS}Contents/{NS}Key") == key
    assert root.findtext(f"{NS}Delimiter") == "\n" and root.findtext(f"{NS}Marker") == "\r"
    assert boto_parse("ListObjects", body)["Contents"][0]["Key"] == key


# --- parsers -----------------------------------------------------------------------------------

def test_parse_complete():
    body = (b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b'<Part><ETag>"e1"</ETag><PartNumber>1</PartNumber><ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part>'
            b'<Part><PartNumber>3</PartNumber><ETag>e3</ETag></Part></CompleteMultipartUpload>')
    parts = x.parse_complete_multipart_upload(body)
    assert [(p.part_number, p.etag) for p in parts] == [(1, "e1"), (3, "e3")]
    assert parts[0].checksums == {"crc32": "AAAAAA=="}
    with pytest.raises(e.InvalidPartOrder):
        x.parse_complete_multipart_upload(b"<CompleteMultipartUpload><Part><PartNumber>2</PartNumber><ETag>a</ETag></Part>"
                                          b"<Part><PartNumber>1</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>")
    for bad in [b"", b"<CompleteMultipartUpload/>", b"<Other/>", b"<CompleteMultipartUpload><Part>",
                b"<CompleteMultipartUpload><Part><PartNumber>0</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>",
                b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
                b'<!DOCTYPE x [<!ENTITY a "b">]><CompleteMultipartUpload/>']:
        with pytest.raises(e.MalformedXML):
            x.parse_complete_multipart_upload(bad)


# --- hostile documents ---------------------------------------------------------------------------

LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE Delete [<!ENTITY a "lol">'
          + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
          + ']>\n<Delete><Object><Key>&j;</Key></Object></Delete>')
XXE = ('<?xml version="1.0"?>\n<!DOCTYPE Delete [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
       '<Delete><Object><Key>&x;</Key></Object></Delete>')
INTERNAL = ('<?xml version="1.0"?>\n<!DOCTYPE Delete [<!ENTITY k "expanded">]>\n'
            '<Delete><Object><Key>&k;</Key></Object></Delete>')
PARAMETER = ('<?xml version="1.0"?>\n<!DOCTYPE Delete [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x.dtd"> %p;]>\n'
             '<Delete><Object><Key>k</Key></Object></Delete>')
BARE_DOCTYPE = '<!DOCTYPE Delete SYSTEM "http://127.0.0.1:1/x.dtd"><Delete><Object><Key>k</Key></Object></Delete>'
PLAIN = '<?xml version="1.0" encoding="{enc}"?>\n<Delete><Object><Key>k</Key></Object></Delete>'


def encodings(doc: str) -> list[tuple[str, bytes]]:
    """``doc`` in UTF-8, UTF-16 and UTF-32, with and without a BOM, its declaration naming each."""
    out = []
    for enc in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        named = doc.replace('<?xml version="1.0"?>', f'<?xml version="1.0" encoding="{enc.upper()}"?>')
        out.append((enc, named.encode(enc)))
        bom = {"utf-8": "\ufeff", "utf-16-le": "\ufeff", "utf-16-be": "\ufeff",
               "utf-32-le": "\ufeff", "utf-32-be": "\ufeff"}[enc]
        out.append((enc + "+bom", (bom + doc).encode(enc)))
    return out


@pytest.mark.parametrize("doc", [LAUGHS, XXE, INTERNAL, PARAMETER, BARE_DOCTYPE],
                         ids=["billion-laughs", "xxe", "internal-entity", "parameter-entity", "external-dtd"])
def test_dtds_and_entities_refused_in_every_encoding(doc):
    for enc, body in encodings(doc):
        with pytest.raises(e.MalformedXML):
            x.parse_delete(body)
        with pytest.raises(e.MalformedXML):
            x.parse_complete_multipart_upload(body.replace(b"Delete", b"CompleteMultipartUpload"))


@pytest.mark.parametrize("declared,codec", [("UTF-8", "utf-8"), ("UTF-16", "utf-16"),
                                             ("UTF-16LE", "utf-16-le"), ("UTF-16BE", "utf-16-be")])
def test_plain_documents_parse_in_utf8_and_utf16(declared, codec):
    objs, _ = x.parse_delete(PLAIN.format(enc=declared).encode(codec))
    assert [o.key for o in objs] == ["k"]


@pytest.mark.parametrize("enc", ["utf-32", "utf-32-le", "utf-32-be", "utf-7"])
def test_encodings_expat_cannot_read_are_malformed(enc):
    with pytest.raises(e.MalformedXML):
        x.parse_delete(PLAIN.format(enc=enc.upper()).encode(enc))


def test_parse_delete():
    body = (b"<Delete><Quiet>true</Quiet><Object><Key>a b</Key></Object>"
            b"<Object><Key>c</Key><VersionId>null</VersionId></Object></Delete>")
    objs, quiet = x.parse_delete(body)
    assert quiet and [(o.key, o.version_id) for o in objs] == [("a b", None), ("c", "null")]
    many = b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>"
    with pytest.raises(e.MalformedXML):
        x.parse_delete(many)
    with pytest.raises(e.MalformedXML):
        x.parse_delete(b"<Delete><Object></Object></Delete>")
    with pytest.raises(e.MalformedXML):
        x.parse_delete(b"<Delete/>" + b" " * 3_000_000)


def test_parse_create_bucket():
    assert x.parse_create_bucket_configuration(b"") is None
    assert x.parse_create_bucket_configuration(
        b'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>") == "eu-west-1"
    with pytest.raises(e.MalformedXML):
        x.parse_create_bucket_configuration(b"<CreateBucketConfiguration><X/></CreateBucketConfiguration>")
    assert x.parse_versioning_configuration(
        b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>") == "Enabled"


def test_botocore_serialised_requests_parse():
    from botocore.serialize import RestXMLSerializer
    ser = RestXMLSerializer()
    req = ser.serialize_to_request({"Bucket": "b", "Delete": {"Objects": [{"Key": "x&y"}, {"Key": "ü"}], "Quiet": True}},
                                   MODEL.operation_model("DeleteObjects"))
    objs, quiet = x.parse_delete(req["body"])
    assert quiet and [o.key for o in objs] == ["x&y", "ü"]
    req = ser.serialize_to_request({"Bucket": "b", "Key": "k", "UploadId": "u", "MultipartUpload": {
        "Parts": [{"PartNumber": 1, "ETag": '"a"'}, {"PartNumber": 2, "ETag": '"b"', "ChecksumCRC32": "AAAAAA=="}]}},
        MODEL.operation_model("CompleteMultipartUpload"))
    parts = x.parse_complete_multipart_upload(req["body"])
    assert [(p.part_number, p.etag) for p in parts] == [(1, "a"), (2, "b")]


keys = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


@settings(max_examples=100, deadline=None)
@given(st.lists(keys, min_size=1, max_size=20), st.booleans())
def test_delete_roundtrip_through_botocore(ks, quiet):
    from botocore.serialize import RestXMLSerializer
    req = RestXMLSerializer().serialize_to_request(
        {"Bucket": "b", "Delete": {"Objects": [{"Key": k} for k in ks], "Quiet": quiet}},
        MODEL.operation_model("DeleteObjects"))
    try:
        objs, q = x.parse_delete(req["body"])
    except e.MalformedXML:
        # XML 1.0 cannot carry most control characters; expat refuses them as S3 does
        assert any(ord(ch) < 0x20 and ch not in "\t\n\r" for k in ks for ch in k)
        return
    assert q == quiet
    # XML normalises CR and CRLF to LF in text content
    assert [o.key for o in objs] == [k.replace("\r\n", "\n").replace("\r", "\n") for k in ks]


@settings(max_examples=100, deadline=None)
@given(st.lists(keys, max_size=10), st.sampled_from([None, "url"]))
def test_listing_keys_roundtrip(ks, enc):
    objs = [x.ObjectEntry(key=k, last_modified=T, etag="e", size=1) for k in ks]
    if enc is None and any(e.xml_forbidden(k) for k in ks):
        with pytest.raises(e.InvalidArgument):
            x.list_objects_v2(bucket="b", contents=objs, encoding_type=enc)
        return  # only encoding-type=url can carry these to an XML 1.0 parser
    body = x.list_objects_v2(bucket="b", contents=objs, encoding_type=enc)
    got = [c.findtext(f"{NS}Key") for c in ET.fromstring(body).findall(f"{NS}Contents")]
    if enc:
        got = [unquote_plus(k) for k in got]
    assert got == ks
