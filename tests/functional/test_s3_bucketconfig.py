"""Bucket and object sub-resources real tools read: ``?acl`` and the bucket configurations the
store does not keep (policy, CORS, lifecycle, website, encryption, replication, Object Lock,
logging, notifications, acceleration, Requester Pays, Object Ownership, Block Public Access).

With unmodified clients against one real cluster: boto3 (SigV4 and SigV2), the AWS CLI
(``s3api get-bucket-acl``) and minio-py, plus signed raw requests for what no client sends
(hostile ACL documents). Each read gets S3's answer for a bucket without the configuration
(never 501), each is its owner's alone, and no PUT of an ACL that grants anyone else is taken.
"""

from __future__ import annotations

import json

import botocore.exceptions
import pytest
from minio import Minio
from minio.error import S3Error

from tests.cluster import client_error, signed_request

MiB = 1024 * 1024
CLUSTER_OPTIONS = dict(inline_max_size="4KiB", k=2, m=1, storage_nodes=3, metadata_nodes=1)
XSI = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def error(fn, *args, **kw) -> tuple[int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        fn(*args, **kw)
    return client_error(info.value)


def owner_only(name: str = "alice") -> list[dict]:
    return [{"Grantee": {"Type": "CanonicalUser", "ID": name, "DisplayName": name}, "Permission": "FULL_CONTROL"}]


def assert_owner_only_acl(got: dict, name: str = "alice") -> None:
    assert got["Owner"]["ID"] == name
    assert got["Grants"] == owner_only(name)


# --- ?acl ----------------------------------------------------------------------------------------

def test_bucket_acl(s3, s3_bob, bucket):
    got = s3.get_bucket_acl(Bucket=bucket)
    assert_owner_only_acl(got)
    assert got["Owner"] == s3.list_buckets()["Owner"]  # the owner as ListBuckets names it
    # what grants only the owner is what is there: accepted, nothing changes
    for kw in ({"ACL": "private"}, {"ACL": "bucket-owner-full-control"},
               {"AccessControlPolicy": {"Owner": got["Owner"], "Grants": got["Grants"]}}):
        assert s3.put_bucket_acl(Bucket=bucket, **kw)["ResponseMetadata"]["HTTPStatusCode"] == 200
    # anything else is refused as S3 refuses it on a bucket whose ACLs are disabled
    public = owner_only() + [{"Grantee": {"Type": "Group", "URI": ALL_USERS}, "Permission": "READ"}]
    for kw in ({"ACL": "public-read"}, {"ACL": "authenticated-read"}, {"GrantRead": f'uri="{ALL_USERS}"'},
               {"AccessControlPolicy": {"Owner": got["Owner"], "Grants": public}},
               {"AccessControlPolicy": {"Owner": got["Owner"], "Grants": owner_only("bob")}}):
        assert error(s3.put_bucket_acl, Bucket=bucket, **kw) == (400, "AccessControlListNotSupported"), kw
    assert error(s3.put_bucket_acl, Bucket=bucket, ACL="everyone") == (400, "InvalidArgument")
    # another user's bucket, a missing bucket
    assert error(s3_bob.get_bucket_acl, Bucket=bucket) == (403, "AccessDenied")
    assert error(s3_bob.put_bucket_acl, Bucket=bucket, ACL="private") == (403, "AccessDenied")
    assert error(s3.get_bucket_acl, Bucket=bucket + "-missing") == (404, "NoSuchBucket")
    assert error(s3.put_bucket_acl, Bucket=bucket + "-missing", ACL="private") == (404, "NoSuchBucket")
    assert_owner_only_acl(s3.get_bucket_acl(Bucket=bucket))
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert error(s3_bob.get_object, Bucket=bucket, Key="k") == (403, "AccessDenied")


def test_object_acl(s3, s3_bob, bucket):
    s3.put_object(Bucket=bucket, Key="dir/k", Body=b"x")
    assert_owner_only_acl(s3.get_object_acl(Bucket=bucket, Key="dir/k"))
    assert_owner_only_acl(s3.get_object_acl(Bucket=bucket, Key="dir/k", VersionId="null"))
    for kw in ({"ACL": "private"}, {"ACL": "bucket-owner-full-control"},
               {"AccessControlPolicy": {"Owner": {"ID": "alice"}, "Grants": owner_only()}}):
        assert s3.put_object_acl(Bucket=bucket, Key="dir/k", **kw)["ResponseMetadata"]["HTTPStatusCode"] == 200
    for kw in ({"ACL": "public-read"}, {"GrantFullControl": 'id="bob"'},
               {"AccessControlPolicy": {"Owner": {"ID": "alice"}, "Grants": owner_only("bob")}}):
        assert error(s3.put_object_acl, Bucket=bucket, Key="dir/k", **kw) == (400, "AccessControlListNotSupported")
    assert error(s3.get_object_acl, Bucket=bucket, Key="missing") == (404, "NoSuchKey")
    assert error(s3.put_object_acl, Bucket=bucket, Key="missing", ACL="private") == (404, "NoSuchKey")
    assert error(s3.get_object_acl, Bucket=bucket, Key="dir/k", VersionId="v1") == (404, "NoSuchVersion")
    assert error(s3_bob.get_object_acl, Bucket=bucket, Key="dir/k") == (403, "AccessDenied")
    assert error(s3_bob.put_object_acl, Bucket=bucket, Key="dir/k", ACL="private") == (403, "AccessDenied")
    assert s3.get_object(Bucket=bucket, Key="dir/k")["Body"].read() == b"x"  # the object is untouched


def test_aws_cli_get_bucket_acl_and_policy(cluster, s3, bucket):
    got = json.loads(cluster.aws("s3api", "get-bucket-acl", "--bucket", bucket).stdout)
    assert_owner_only_acl(got)
    cluster.aws("s3api", "put-bucket-acl", "--bucket", bucket, "--acl", "private")
    res = cluster.aws("s3api", "put-bucket-acl", "--bucket", bucket, "--acl", "public-read", check=False)
    assert res.returncode != 0 and b"AccessControlListNotSupported" in res.stderr, res.stderr
    res = cluster.aws("s3api", "get-bucket-policy", "--bucket", bucket, check=False)
    assert res.returncode != 0 and b"NoSuchBucketPolicy" in res.stderr, res.stderr
    blocked = json.loads(cluster.aws("s3api", "get-public-access-block", "--bucket", bucket).stdout)
    assert all(blocked["PublicAccessBlockConfiguration"].values())


# --- configurations no bucket has ----------------------------------------------------------------

NOT_CONFIGURED = [
    ("get_bucket_policy", "NoSuchBucketPolicy"),
    ("get_bucket_policy_status", "NoSuchBucketPolicy"),
    ("get_bucket_cors", "NoSuchCORSConfiguration"),
    ("get_bucket_lifecycle_configuration", "NoSuchLifecycleConfiguration"),
    ("get_bucket_website", "NoSuchWebsiteConfiguration"),
    ("get_bucket_encryption", "ServerSideEncryptionConfigurationNotFoundError"),
    ("get_bucket_replication", "ReplicationConfigurationNotFoundError"),
    ("get_object_lock_configuration", "ObjectLockConfigurationNotFoundError"),
]
DEFAULTS = ["get_bucket_logging", "get_bucket_notification_configuration", "get_bucket_accelerate_configuration",
            "get_bucket_request_payment", "get_bucket_ownership_controls", "get_public_access_block"]
DELETES = ["delete_bucket_policy", "delete_bucket_cors", "delete_bucket_lifecycle", "delete_bucket_website",
           "delete_bucket_encryption", "delete_bucket_replication", "delete_public_access_block",
           "delete_bucket_ownership_controls"]


def body_of(got: dict) -> dict:
    return {k: v for k, v in got.items() if k != "ResponseMetadata"}


def test_not_configured_reads_are_s3s_404s(s3, s3_bob, bucket):
    for op, code in NOT_CONFIGURED:
        assert error(getattr(s3, op), Bucket=bucket) == (404, code), op
        assert error(getattr(s3_bob, op), Bucket=bucket) == (403, "AccessDenied"), op
        assert error(getattr(s3, op), Bucket=bucket + "-missing") == (404, "NoSuchBucket"), op


def test_default_configuration_documents(s3, s3_bob, bucket):
    assert body_of(s3.get_bucket_logging(Bucket=bucket)) == {}
    assert body_of(s3.get_bucket_notification_configuration(Bucket=bucket)) == {}
    assert body_of(s3.get_bucket_accelerate_configuration(Bucket=bucket)) == {}
    assert body_of(s3.get_bucket_request_payment(Bucket=bucket)) == {"Payer": "BucketOwner"}
    assert body_of(s3.get_bucket_ownership_controls(Bucket=bucket)) == {
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}}
    assert body_of(s3.get_public_access_block(Bucket=bucket)) == {"PublicAccessBlockConfiguration": {
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}}
    for op in DEFAULTS:
        assert error(getattr(s3_bob, op), Bucket=bucket) == (403, "AccessDenied"), op
        assert error(getattr(s3, op), Bucket=bucket + "-missing") == (404, "NoSuchBucket"), op


def test_deletes_are_204_and_change_nothing(s3, s3_bob, bucket):
    for op in DELETES:
        assert getattr(s3, op)(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204, op
        assert error(getattr(s3_bob, op), Bucket=bucket) == (403, "AccessDenied"), op
        assert error(getattr(s3, op), Bucket=bucket + "-missing") == (404, "NoSuchBucket"), op
    # Block Public Access and Object Ownership are the store's, not settings a DELETE lifts
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    assert s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"] == [
        {"ObjectOwnership": "BucketOwnerEnforced"}]


def test_configuration_writes_stay_not_implemented(s3, bucket):
    assert error(s3.put_bucket_policy, Bucket=bucket, Policy="{}") == (501, "NotImplemented")
    assert error(s3.put_bucket_cors, Bucket=bucket, CORSConfiguration={"CORSRules": [
        {"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]}) == (501, "NotImplemented")
    assert error(s3.put_public_access_block, Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": False}) == (501, "NotImplemented")
    assert error(s3.get_bucket_policy, Bucket=bucket) == (404, "NoSuchBucketPolicy")


def v2_client(cluster, user: int = 0):
    """boto3 signing SigV2 (``signature_version="s3"``)."""
    return cluster.s3_client(user, signature_version="s3")


def test_sigv2_reads(cluster, s3, bucket):
    v2 = v2_client(cluster)
    assert_owner_only_acl(v2.get_bucket_acl(Bucket=bucket))
    assert error(v2.get_bucket_policy, Bucket=bucket) == (404, "NoSuchBucketPolicy")
    assert all(v2.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    assert v2.delete_bucket_cors(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert v2.put_bucket_acl(Bucket=bucket, ACL="private")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert error(v2.put_bucket_acl, Bucket=bucket, ACL="public-read") == (400, "AccessControlListNotSupported")
    assert error(v2_client(cluster, 1).get_bucket_acl, Bucket=bucket) == (403, "AccessDenied")


def test_minio(cluster, bucket):
    u = cluster.user(0)
    mc = Minio(cluster.endpoint.removeprefix("http://"), access_key=u.access_key, secret_key=u.secret_key,
               secure=False, region=cluster.region)
    with pytest.raises(S3Error) as info:
        mc.get_bucket_policy(bucket)
    assert info.value.code == "NoSuchBucketPolicy"
    # minio-py reads these 404s as "none"
    assert mc.get_bucket_encryption(bucket) is None
    assert mc.get_bucket_lifecycle(bucket) is None
    assert mc.get_bucket_replication(bucket) is None
    notification = mc.get_bucket_notification(bucket)
    assert not (notification.cloud_func_config_list or notification.queue_config_list
                or notification.topic_config_list)


# --- hostile ACL documents -----------------------------------------------------------------------

def acl_xml(grants: str, owner: str = "alice") -> bytes:
    return (f'<AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/" {XSI}>'
            f"<Owner><ID>{owner}</ID></Owner><AccessControlList>{grants}</AccessControlList>"
            "</AccessControlPolicy>").encode()


def grant(who: str, permission: str = "FULL_CONTROL") -> str:
    return f'<Grant><Grantee xsi:type="CanonicalUser"><ID>{who}</ID></Grantee><Permission>{permission}</Permission></Grant>'


@pytest.mark.parametrize("body,code", [
    (b"not xml", "MalformedACLError"),
    (b"", "MalformedACLError"),
    (b"<Tagging><TagSet/></Tagging>", "MalformedACLError"),
    (acl_xml(grant("alice", "EVERYTHING")), "MalformedACLError"),
    (b'<!DOCTYPE a [<!ENTITY x "alice">]>' + acl_xml(grant("&x;")), "MalformedACLError"),
    (b'<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
     + acl_xml(grant("&b;")), "MalformedACLError"),
    (acl_xml(grant("alice") * 101), "MalformedACLError"),
    (acl_xml(grant("bob")), "AccessControlListNotSupported"),
    (acl_xml(grant("alice") + f'<Grant><Grantee xsi:type="Group"><URI>{ALL_USERS}</URI></Grantee>'
                              "<Permission>READ</Permission></Grant>"), "AccessControlListNotSupported"),
    (acl_xml(grant("alice"), owner="bob"), "AccessControlListNotSupported"),
    (acl_xml(""), "AccessControlListNotSupported"),
])
def test_hostile_acl_documents(cluster, s3, bucket, body, code):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for path in (f"/{bucket}", f"/{bucket}/k"):
        r = signed_request(cluster, "PUT", path, query="acl", body=body)
        assert r.status_code == 400 and f"<Code>{code}</Code>".encode() in r.content, (path, r.status_code, r.text)
    assert_owner_only_acl(s3.get_bucket_acl(Bucket=bucket))
    assert_owner_only_acl(s3.get_object_acl(Bucket=bucket, Key="k"))


def test_oversized_acl_and_the_other_users_signed_put(cluster, s3, s3_bob, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    big = acl_xml(grant("alice" + " " * 2 * MiB))
    for path in (f"/{bucket}", f"/{bucket}/k"):
        r = signed_request(cluster, "PUT", path, query="acl", body=big)
        assert r.status_code == 400, (path, r.status_code, r.text)
        # bob, signing the owner-only ACL of alice's bucket (or granting himself): AccessDenied
        for body in (acl_xml(grant("alice")), acl_xml(grant("bob"), owner="bob")):
            r = signed_request(cluster, "PUT", path, query="acl", body=body, user=1)
            assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content, (path, r.text)
        r = signed_request(cluster, "PUT", path, query="acl", headers={"x-amz-acl": "public-read"}, user=1)
        assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content, (path, r.text)
    assert error(s3_bob.get_object, Bucket=bucket, Key="k") == (403, "AccessDenied")
    assert_owner_only_acl(s3.get_bucket_acl(Bucket=bucket))
