"""Headers a write names that the store cannot keep: SSE-C (``objstore/s3/encryption.py``),
``x-amz-storage-class`` (``storageclass.py``), ACLs (``acl.py``) and Object Lock (``objectlock.py``),
answered as S3 answers them."""

from __future__ import annotations

import pytest
from headwater.objstore.s3 import errors as e
from headwater.objstore.s3.encryption import check_key_for, check_write
from headwater.objstore.s3.storageclass import check_storage_class

from headwater.http.types import Headers

SSE_C = [("x-amz-server-side-encryption-customer-algorithm", "AES256"),
         ("x-amz-server-side-encryption-customer-key", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
         ("x-amz-server-side-encryption-customer-key-md5", "ZGVhZGJlZWZkZWFkYmVlZg==")]
COPY_SSE_C = [(name.replace("x-amz-", "x-amz-copy-source-", 1), v) for name, v in SSE_C]


@pytest.mark.parametrize("operation", ["PutObject", "CopyObject", "CreateMultipartUpload"])
def test_sse_c_writes_are_access_denied(operation):
    for one in SSE_C:  # any one of the three names the encryption
        with pytest.raises(e.AccessDenied, match="SSE-C"):
            check_write(operation, Headers([one]))
    for method in ("AES256", "aws:kms", "aws:kms:dsse"):  # SSE-S3, SSE-KMS: not refused
        check_write(operation, Headers([("x-amz-server-side-encryption", method)]))
    with pytest.raises(e.InvalidArgument, match="encryption method specified is not supported") as info:
        check_write(operation, Headers([("x-amz-server-side-encryption", "aes256")]))
    assert info.value.extra == {"ArgumentName": "x-amz-server-side-encryption", "ArgumentValue": "aes256"}
    check_write(operation, Headers(COPY_SSE_C))  # the source's key is the read side's business


@pytest.mark.parametrize("operation", ["GetObject", "HeadObject", "UploadPart", "UploadPartCopy", "DeleteObject"])
def test_other_operations_are_not_writes(operation):
    check_write(operation, Headers(SSE_C))


def test_a_key_for_an_object_not_encrypted_with_one():
    with pytest.raises(e.InvalidRequest, match="not applicable to this object"):
        check_key_for(Headers(SSE_C))
    check_key_for(Headers([("range", "bytes=0-1")]))
    check_key_for(Headers(SSE_C), copy_source=True)  # the destination's key, not the source's
    with pytest.raises(e.InvalidRequest, match="not applicable to this object"):
        check_key_for(Headers(COPY_SSE_C), copy_source=True)


def test_storage_class():
    for name in ("STANDARD", "STANDARD_IA", "GLACIER", "INTELLIGENT_TIERING", "REDUCED_REDUNDANCY"):
        check_storage_class("PutObject", Headers([("x-amz-storage-class", name)]))
    for operation in ("PutObject", "CopyObject", "CreateMultipartUpload"):
        with pytest.raises(e.InvalidStorageClass) as info:
            check_storage_class(operation, Headers([("x-amz-storage-class", "BOGUS")]))
        assert info.value.http_status == 400 and info.value.extra == {"StorageClassRequested": "BOGUS"}
    check_storage_class("PutObject", Headers([]))
    check_storage_class("GetObject", Headers([("x-amz-storage-class", "BOGUS")]))  # only writes name one


def test_acls_that_grant_only_the_owner_pass_others_are_refused():
    from headwater.objstore.s3.acl import bucket_acl_error, check_acl

    for operation in ("PutObject", "CopyObject", "CreateMultipartUpload"):
        for canned in ("private", "bucket-owner-full-control", "bucket-owner-read"):
            check_acl(operation, Headers([("x-amz-acl", canned)]))
        for canned in ("public-read", "public-read-write", "authenticated-read", "aws-exec-read"):
            with pytest.raises(e.AccessControlListNotSupported):
                check_acl(operation, Headers([("x-amz-acl", canned)]))
        with pytest.raises(e.AccessControlListNotSupported):
            check_acl(operation, Headers([("x-amz-grant-read", 'uri="http://acs.amazonaws.com/groups/global/AllUsers"')]))
        with pytest.raises(e.InvalidArgument):
            check_acl(operation, Headers([("x-amz-acl", "everyone")]))
    assert bucket_acl_error(Headers([("x-amz-acl", "private")])) is None
    assert bucket_acl_error(Headers([])) is None
    for canned in ("public-read", "bucket-owner-full-control", "log-delivery-write"):
        assert isinstance(bucket_acl_error(Headers([("x-amz-acl", canned)])), e.InvalidBucketAclWithObjectOwnership)
    assert isinstance(bucket_acl_error(Headers([("x-amz-grant-full-control", "id=x")])),
                      e.InvalidBucketAclWithObjectOwnership)
    check_acl("CreateBucket", Headers([("x-amz-acl", "public-read")]))  # judged by create_bucket itself
    check_acl("GetObject", Headers([("x-amz-acl", "public-read")]))  # only writes carry one


def test_object_lock_headers():
    from headwater.objstore.s3.objectlock import bucket_lock_error, check_object_lock

    for operation in ("PutObject", "CopyObject", "CreateMultipartUpload"):
        for one in (("x-amz-object-lock-mode", "GOVERNANCE"), ("x-amz-object-lock-retain-until-date", "2030-01-01T00:00:00Z"),
                    ("x-amz-object-lock-legal-hold", "ON")):
            with pytest.raises(e.InvalidRequest, match="missing Object Lock Configuration"):
                check_object_lock(operation, Headers([one]))
        check_object_lock(operation, Headers([("x-amz-meta-lock", "no")]))
    check_object_lock("GetObject", Headers([("x-amz-object-lock-mode", "GOVERNANCE")]))
    err = bucket_lock_error(Headers([("x-amz-bucket-object-lock-enabled", "True")]))
    assert isinstance(err, e.NotImplemented) and err.http_status == 501
    assert bucket_lock_error(Headers([("x-amz-bucket-object-lock-enabled", "false")])) is None
    assert bucket_lock_error(Headers([])) is None
