"""S3 tag sets, sans-IO: the x-amz-tagging header, the <Tagging> document, S3's limits, and the
GetObjectTagging body as botocore reads it."""

from urllib.parse import urlencode

import pytest
from botocore.parsers import RestXMLParser
from botocore.session import get_session
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.objstore.records import ObjectRecord, UploadRecord
from headwater.objstore.s3 import errors as e
from headwater.objstore.s3 import tagging as t

MODEL = get_session().get_service_model("s3")


def doc(*pairs, root="Tagging", ns=True) -> bytes:
    xmlns = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' if ns else ""
    tags = "".join(f"<Tag><Key>{k}</Key><Value>{v}</Value></Tag>" for k, v in pairs)
    return f'<?xml version="1.0" encoding="UTF-8"?><{root}{xmlns}><TagSet>{tags}</TagSet></{root}>'.encode()


def test_header_url_encoded_pairs_in_order():
    assert t.parse_header("b=2&a=1&empty=&novalue") == {"b": "2", "a": "1", "empty": "", "novalue": ""}
    # As clients encode it (urlencode: spaces as +, the rest %-escaped, UTF-8).
    raw = urlencode({"project x": "caf\u00e9 +1", "path": "a/b:c@d=e"})
    assert t.parse_header(raw) == {"project x": "caf\u00e9 +1", "path": "a/b:c@d=e"}
    assert t.parse_header(None) == {} and t.parse_header("") == {} and t.parse_header("  ") == {}


@pytest.mark.parametrize("raw", ["a=%zz", "a=%4", "%=1", "a=%ff%fe", "a=\u00e9"])
def test_header_bad_percent_encoding_is_invalid_argument(raw):
    with pytest.raises(e.InvalidArgument):
        t.parse_header(raw)


def test_header_limits():
    ten = "&".join(f"k{i}=v" for i in range(10))
    assert len(t.parse_header(ten)) == 10
    with pytest.raises(e.InvalidTag, match="greater than 10"):
        t.parse_header(ten + "&k10=v")
    with pytest.raises(e.InvalidTag, match="greater than 10"):
        t.parse_header("&".join(f"k{i}=v" for i in range(1000)))
    with pytest.raises(e.InvalidTag):
        t.parse_header("x=" * 100_000)  # one enormous header: refused before decoding
    # a key twice in the header is the header's fault, as on S3 (`aws s3api put-object --tagging
    # 'a=&a='`: InvalidArgument "... without tag name duplicates"); in a document, InvalidTag
    for dup in ("a=1&a=2", "a=&a=", "a=1&%61=2", "k+x=1&k%20x=2"):
        with pytest.raises(e.InvalidArgument, match="duplicates"):
            t.parse_header(dup)
    with pytest.raises(e.InvalidTag, match="same key"):
        t.parse_document(doc(("a", "1"), ("a", "2")), max_tags=10)
    with pytest.raises(e.InvalidTag, match="aws:"):
        t.parse_header("aws%3Acreated=1")
    with pytest.raises(e.InvalidTag):
        t.parse_header("=value")


def test_key_and_value_lengths_are_characters():
    assert t.validate([("\u00e9" * 128, "\u00e9" * 256)], max_tags=10)  # 2 bytes each, in characters
    with pytest.raises(e.InvalidTag, match="TagKey.*too long"):
        t.validate([("k" * 129, "")], max_tags=10)
    with pytest.raises(e.InvalidTag, match="TagValue.*too long"):
        t.validate([("k", "v" * 257)], max_tags=10)


@pytest.mark.parametrize("key", ["a*b", "a\tb", "quote'", "semi;", "a<b", "a\x00"])
def test_characters_outside_s3s_pattern_are_refused(key):
    with pytest.raises(e.InvalidTag):
        t.validate([(key, "v")], max_tags=10)
    with pytest.raises(e.InvalidTag):
        t.validate([("k", key)], max_tags=10)


def test_allowed_characters():
    ok = "Az09 _.:/=+-@ \u00e9\u65e5\u672c \u0661\u0662"
    assert t.validate([(ok, ok)], max_tags=10) == {ok: ok}


def test_document_round_trip_and_namespace_optional():
    assert t.parse_document(doc(("b", "2"), ("a", "")), max_tags=10) == {"b": "2", "a": ""}
    assert t.parse_document(doc(("k", "v"), ns=False), max_tags=10) == {"k": "v"}
    assert t.parse_document(doc(), max_tags=10) == {}  # an empty TagSet: no tags
    body = t.tagging_document({"b": "2", "a": "caf\u00e9 :/=+-@"})
    parsed = RestXMLParser().parse({"status_code": 200, "headers": {}, "body": body},
                                   MODEL.operation_model("GetObjectTagging").output_shape)
    assert parsed["TagSet"] == [{"Key": "b", "Value": "2"}, {"Key": "a", "Value": "caf\u00e9 :/=+-@"}]
    assert t.parse_document(body, max_tags=10) == {"b": "2", "a": "caf\u00e9 :/=+-@"}


def test_document_limits_object_and_bucket():
    eleven = doc(*[(f"k{i}", "v") for i in range(11)])
    with pytest.raises(e.InvalidTag, match="Object tags cannot be greater than 10"):
        t.parse_document(eleven, max_tags=t.MAX_OBJECT_TAGS)
    assert len(t.parse_document(eleven, max_tags=t.MAX_BUCKET_TAGS)) == 11
    with pytest.raises(e.InvalidTag, match="Bucket tags cannot be greater than 50"):
        t.parse_document(doc(*[(f"k{i}", "v") for i in range(51)]), max_tags=t.MAX_BUCKET_TAGS)
    with pytest.raises(e.InvalidTag, match="same key"):
        t.parse_document(doc(("k", "1"), ("k", "2")), max_tags=10)


@pytest.mark.parametrize("body", [
    b"",
    b"not xml",
    b"<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet>",          # cut
    b"<Tagging/>",                                                                 # no TagSet
    b"<Tagging><TagSet/><TagSet/></Tagging>",
    b"<Tagging><TagSet/><Other/></Tagging>",
    b"<Other><TagSet/></Other>",
    b"<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>",               # no Value
    b"<Tagging><TagSet><Tag><Value>v</Value></Tag></TagSet></Tagging>",           # no Key
    b"<Tagging><TagSet><Tag><Key>k</Key><Key>j</Key><Value>v</Value></Tag></TagSet></Tagging>",
    b"<Tagging><TagSet><Tag><Key><b>k</b></Key><Value>v</Value></Tag></TagSet></Tagging>",
    b"<Tagging><TagSet><Item/></TagSet></Tagging>",
    b'<!DOCTYPE x [<!ENTITY a "aaaa">]><Tagging><TagSet><Tag><Key>&a;</Key><Value>v</Value></Tag>'
    b"</TagSet></Tagging>",
    b"<Tagging>" + b" " * (t.MAX_DOCUMENT_BYTES + 1) + b"</Tagging>",
])
def test_malformed_documents_are_malformed_xml(body):
    with pytest.raises(e.MalformedXML):
        t.parse_document(body, max_tags=10)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_body_is_a_tag_set_or_an_s3_error(body):
    try:
        t.parse_document(body, max_tags=10)
    except (e.MalformedXML, e.InvalidTag):
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_header_is_a_tag_set_or_an_s3_error(raw):
    try:
        t.parse_header(raw)
    except (e.InvalidArgument, e.InvalidTag):
        pass


def test_records_keep_tags_and_untagged_records_keep_their_shape():
    rec = ObjectRecord(key="k", size=0, etag='"e"', last_modified=1.0, owner="o", tags={"a": "1"})
    assert ObjectRecord.from_value(rec.to_value()).tags == {"a": "1"}
    assert "tags" not in ObjectRecord(key="k", size=0, etag='"e"', last_modified=1.0, owner="o").to_value()
    up = UploadRecord(key="k", upload_id="u", initiated=1.0, owner="o", tags={"b": "2"})
    assert UploadRecord.from_value(up.to_value()).tags == {"b": "2"}


def _lands(value_now: dict, condition: tuple) -> bool:
    """Whether a write under ``condition`` lands on the live record ``value_now``: the metadata
    ring's own check, as applied in its log."""
    from headwater.objstore.metadata.store import Command, OpKind, Record, _satisfied
    cmd = Command(kind=OpKind.PUT, ns="obj/b", partition=0, key="k", version=(1, "w"), value={},
                  if_match=condition)
    return _satisfied(cmd, Record(version=(0, "w"), value=value_now))


def test_tagging_and_a_repair_rewrite_never_undo_each_other():
    """A tagging change and a repair's layout rewrite, both from the same read: whichever lands
    second fails its compare-and-swap (and reads again) instead of undoing the first, the
    rewrite's layout or the new tags. Two tagging changes from one read both land (the last
    wins, as on S3): on ``rev`` they failed each other, and racing taggers gave up with
    OperationAborted."""
    from dataclasses import replace

    from headwater.objstore.gateway.tagging import _as_read, retagged
    from headwater.objstore.layouts import layouts_in, rewrite
    from headwater.objstore.records import Layout, new_rev

    lay = Layout(oid="o1", size=100, k=2, m=1, stripe_bytes=64, nodes=("s1", "s2", None))
    read = ObjectRecord(key="k", size=100, etag='"e"', last_modified=1.0, owner="o", layouts=(lay,),
                        rev=new_rev(), data_rev=new_rev()).to_value()
    tagged, tag_cond = retagged(read, {"a": "1"})
    assert tag_cond == _as_read(read) == ("drev", read["drev"])
    assert tagged["rev"] != read["rev"] and tagged["drev"] == read["drev"]
    (ref,) = layouts_in("obj/b", "k", read)
    repaired, repair_cond = rewrite(ref, replace(lay, nodes=("s1", "s2", "s3")))
    assert repaired["rev"] != read["rev"] and repaired["drev"] != read["drev"]
    assert _lands(read, repair_cond) and _lands(read, tag_cond)
    assert not _lands(tagged, repair_cond)       # the repair, after the tags: reads again
    assert not _lands(repaired, tag_cond)        # the tags, after the repair: read again
    assert _lands(tagged, retagged(read, {"b": "2"})[1])  # a second tagging from the same read
    new_version = replace(ObjectRecord.from_value(read), rev=new_rev(), data_rev=new_rev()).to_value()
    assert not _lands(new_version, tag_cond)     # a PutObject since the read: read again
    # records from before ``data_rev`` compare on ``rev``, and get a data_rev when tagged
    no_drev = {k: v for k, v in read.items() if k != "drev"}
    tagged2, cond2 = retagged(no_drev, {"a": "1"})
    assert cond2 == ("rev", read["rev"]) and tagged2["drev"]
    assert not _lands(tagged, cond2)
    # records from before ``rev``: the layouts stand for the version, mtime for inline bytes
    old = {k: v for k, v in read.items() if k not in ("rev", "drev")}
    assert _as_read(old) == ("layouts", old["layouts"])
    assert not _lands(rewrite(layouts_in("obj/b", "k", old)[0], replace(lay, nodes=("s1", "s2", "s3")))[0],
                      _as_read(old))
    inline = ObjectRecord(key="k", size=1, etag='"e"', last_modified=2.0, owner="o", inline=b"x").to_value()
    assert _as_read(inline) == ("mtime", 2.0)
    assert not _lands({**inline, "mtime": 3.0}, _as_read(inline))  # a newer inline version


def test_a_repair_rewrite_read_before_rev_never_undoes_a_tagging_change():
    """A record from before ``rev``: the reconstructor reads it, a PutObjectTagging then lands
    (same layouts; tags and a first rev). The rewrite, built from the read without the tags,
    must fail and read again: on unchanged layouts it would land and undo the acknowledged
    tags. Its condition stays on the layouts (not "no rev yet"): a gateway from before rev,
    mid-upgrade, writes new versions without one. And the other way round: a rewrite gives the
    record a rev and new layouts, so a tagging change read before it fails too."""
    from dataclasses import replace

    from headwater.objstore.gateway.tagging import _as_read, retagged
    from headwater.objstore.layouts import layouts_in, rewrite
    from headwater.objstore.records import Layout

    lay = Layout(oid="o1", size=100, k=2, m=1, stripe_bytes=64, nodes=("s1", "s2", None))
    old = ObjectRecord(key="k", size=100, etag='"e"', last_modified=1.0, owner="o", layouts=(lay,)).to_value()
    assert "rev" not in old
    tagged, tag_cond = retagged(old, {"a": "1"})
    assert _lands(old, tag_cond) and tagged["rev"]
    assert ObjectRecord.from_value(tagged).layouts == (lay,)  # the mark is no part of the layout
    (ref,) = layouts_in("obj/b", "k", old)
    repaired, cond = rewrite(ref, replace(lay, nodes=("s1", "s2", "s3")))
    assert _lands(old, cond)           # nothing in between: the rewrite lands
    assert not _lands(tagged, cond)    # the tags landed first: the rewrite reads again
    assert repaired.get("rev")         # and the rewritten record has a rev of its own
    assert not _lands(repaired, tag_cond)  # a tagging change read before it reads again
    # a new version from a gateway without rev (mid-upgrade): the rewrite reads again
    older_gateway = {**old, "etag": '"f"', "layouts": [replace(lay, oid="o2").to_value()]}
    assert not _lands(older_gateway, cond)
    # two tagging changes of a record from before rev, from the same read: the second reads again
    assert not _lands(tagged, retagged(old, {"b": "2"})[1])
    # once tagged, the record has a rev: the next rewrite and tagging compare on it
    (ref2,) = layouts_in("obj/b", "k", tagged)
    repaired2, cond2 = rewrite(ref2, replace(lay, nodes=("s1", "s2", "s3")))
    assert cond2 == ("rev", tagged["rev"]) and repaired2["tags"] == {"a": "1"}
