"""The ``?acl`` documents and check (``objstore/s3/acl.py``) and the answers for the bucket
configurations the store does not keep (``objstore/s3/bucketconfig.py``), sans-IO."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from headwater.objstore.s3 import acl, bucketconfig
from headwater.objstore.s3 import errors as e

from headwater.http.types import Headers

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


def policy(*grants: str, owner: str | None = "alice") -> bytes:
    """An <AccessControlPolicy> with ``grants`` (each a <Grant> body) and ``owner``."""
    own = f"<Owner><ID>{owner}</ID><DisplayName>{owner}</DisplayName></Owner>" if owner is not None else ""
    body = "".join(f"<Grant>{g}</Grant>" for g in grants)
    return (f'<AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/" xmlns:xsi="{XSI}">'
            f"{own}<AccessControlList>{body}</AccessControlList></AccessControlPolicy>").encode()


def user(uid: str, permission: str = "FULL_CONTROL") -> str:
    return f'<Grantee xsi:type="CanonicalUser"><ID>{uid}</ID></Grantee><Permission>{permission}</Permission>'


ALL_USERS = ('<Grantee xsi:type="Group"><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee>'
             "<Permission>READ</Permission>")


def test_access_control_policy_names_the_owner_with_full_control():
    root = ET.fromstring(acl.access_control_policy("alice", "Alice & co"))
    assert root.tag == NS + "AccessControlPolicy"
    assert root.find(f"{NS}Owner/{NS}ID").text == "alice"
    assert root.find(f"{NS}Owner/{NS}DisplayName").text == "Alice & co"
    grants = root.findall(f"{NS}AccessControlList/{NS}Grant")
    assert len(grants) == 1
    grantee = grants[0].find(f"{NS}Grantee")
    assert grantee.get(f"{{{XSI}}}type") == "CanonicalUser" and grantee.find(f"{NS}ID").text == "alice"
    assert grants[0].find(f"{NS}Permission").text == "FULL_CONTROL"


def test_what_grants_only_the_owner_passes():
    for body in (policy(user("alice")), policy(user("alice"), owner=None), policy(user("alice"), user("alice"))):
        acl.check_put_acl(Headers([]), body, owner_id="alice")
    for canned in ("private", "bucket-owner-full-control", "bucket-owner-read"):
        acl.check_put_acl(Headers([("x-amz-acl", canned)]), b"", owner_id="alice")
    # the document as read back by GetBucketAcl is one a PUT may send back
    acl.check_put_acl(Headers([]), acl.access_control_policy("alice", "alice"), owner_id="alice")


@pytest.mark.parametrize("body", [
    policy(user("bob")),
    policy(user("alice"), user("bob", "READ")),
    policy(user("alice", "READ")),
    policy(user("alice"), ALL_USERS),
    policy(),  # no grant at all: not even the owner
    policy(user("alice"), owner="bob"),
    policy('<Grantee xsi:type="AmazonCustomerByEmail"><EmailAddress>a@example.com</EmailAddress></Grantee>'
           "<Permission>FULL_CONTROL</Permission>"),
])
def test_any_other_grant_is_not_supported(body):
    with pytest.raises(e.AccessControlListNotSupported):
        acl.check_put_acl(Headers([]), body, owner_id="alice")


def test_headers_granting_others_are_not_supported():
    for headers in ([("x-amz-acl", "public-read")], [("x-amz-acl", "authenticated-read")],
                    [("x-amz-grant-read", 'uri="http://acs.amazonaws.com/groups/global/AllUsers"')],
                    [("x-amz-grant-full-control", 'id="bob"')]):
        with pytest.raises(e.AccessControlListNotSupported):
            acl.check_put_acl(Headers(headers), b"", owner_id="alice")
    with pytest.raises(e.InvalidArgument):
        acl.check_put_acl(Headers([("x-amz-acl", "everyone")]), b"", owner_id="alice")
    with pytest.raises(e.UnexpectedContent):
        acl.check_put_acl(Headers([("x-amz-acl", "private")]), policy(user("alice")), owner_id="alice")


@pytest.mark.parametrize("body", [
    b"",
    b"<AccessControlPolicy>",
    b"<Tagging><TagSet/></Tagging>",
    b"<AccessControlPolicy><Owner><ID>alice</ID></Owner></AccessControlPolicy>",  # no list
    policy("<Permission>FULL_CONTROL</Permission>"),  # no grantee
    policy(user("alice", "EVERYTHING")),
    policy('<Grantee><ID>alice</ID></Grantee><Permission>FULL_CONTROL</Permission>'),  # no xsi:type
    policy('<Grantee xsi:type="CanonicalUser"><URI>x</URI></Grantee><Permission>FULL_CONTROL</Permission>'),
    policy(user("alice") + "<Extra/>"),
    b'<!DOCTYPE a [<!ENTITY x "alice">]>' + policy(user("&x;")),
    b'<!DOCTYPE a SYSTEM "http://example.com/a.dtd">' + policy(user("alice")),
    policy(*[user("alice")] * (acl.MAX_GRANTS + 1)),
    policy(user("alice" + " " * acl.MAX_DOCUMENT_BYTES)),
])
def test_malformed_documents_are_malformed_acl_error(body):
    with pytest.raises(e.MalformedACLError):
        acl.check_put_acl(Headers([]), body, owner_id="alice")


@pytest.mark.parametrize("sub,code", [
    ("policy", "NoSuchBucketPolicy"), ("policyStatus", "NoSuchBucketPolicy"), ("cors", "NoSuchCORSConfiguration"),
    ("lifecycle", "NoSuchLifecycleConfiguration"), ("website", "NoSuchWebsiteConfiguration"),
    ("encryption", "ServerSideEncryptionConfigurationNotFoundError"),
    ("replication", "ReplicationConfigurationNotFoundError"),
    ("object-lock", "ObjectLockConfigurationNotFoundError"),
])
def test_configurations_no_bucket_has_are_their_404(sub, code):
    with pytest.raises(e.S3Error) as info:
        bucketconfig.answer(sub, "b")
    assert (info.value.code, info.value.http_status) == (code, 404)
    assert info.value.extra == {"BucketName": "b"} and info.value.resource == "/b"


def _doc(sub: str) -> ET.Element:
    root = ET.fromstring(bucketconfig.answer(sub, "b"))
    assert root.tag.startswith(NS)
    return root


def test_default_documents():
    assert _doc("logging").tag == NS + "BucketLoggingStatus" and len(_doc("logging")) == 0
    assert _doc("notification").tag == NS + "NotificationConfiguration" and len(_doc("notification")) == 0
    assert _doc("accelerate").tag == NS + "AccelerateConfiguration" and len(_doc("accelerate")) == 0
    assert _doc("requestPayment").find(NS + "Payer").text == "BucketOwner"
    assert _doc("ownershipControls").find(f"{NS}Rule/{NS}ObjectOwnership").text == "BucketOwnerEnforced"
    block = _doc("publicAccessBlock")
    assert {c.tag.removeprefix(NS): c.text for c in block} == {
        "BlockPublicAcls": "true", "IgnorePublicAcls": "true", "BlockPublicPolicy": "true",
        "RestrictPublicBuckets": "true"}
    # the store does not encrypt at rest: no document may claim it does
    assert "encryption" not in {sub for sub in bucketconfig.GET_OPERATIONS if isinstance(
        bucketconfig._ANSWERS[sub][1], bytes)}


def test_every_deletable_configuration_is_one_get_answers():
    assert set(bucketconfig.DELETE_OPERATIONS) <= set(bucketconfig.GET_OPERATIONS)
