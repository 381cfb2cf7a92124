"""Bucket configurations the store does not keep, answered as S3 answers for a bucket that has
none of them, sans-IO.

No bucket here can be given a policy, CORS rules, a lifecycle, a website, default encryption,
replication, Object Lock, logging, notifications, transfer acceleration or Requester Pays: their
PUT answers 501 NotImplemented (the gateway's router). So every bucket is one without them, and
the truthful answer to a GET is S3's answer for such a bucket: a 404 with the configuration's own
code, or the empty (or default) document. Tools read several of these as a matter of course
(s3cmd info, Terraform's refresh of ``aws_s3_bucket``, minio-py's ``get_bucket_policy``); a 501
there is an error S3 never gives.

Two answers are not "unset" but the store's fixed settings, which S3 also reports for a bucket
created since April 2023:

- ``?ownershipControls``: ObjectOwnership ``BucketOwnerEnforced`` (ACLs disabled: every bucket
  and object is its owner's alone, see ``acl``);
- ``?publicAccessBlock``: all four flags true (nothing here can be made public).

Encryption: the store does not encrypt at rest, so GetBucketEncryption answers
ServerSideEncryptionConfigurationNotFoundError, S3's answer before it applied SSE-S3 to every
bucket in 2023, and never a document naming AES256.

DELETE of a configuration is 204 whether or not there is one (as on S3); here there never is,
so it changes nothing (for ``?publicAccessBlock`` and ``?ownershipControls`` too: they are not
settings a DELETE can lift).
"""

from __future__ import annotations

from .errors import (NoSuchBucketPolicy, NoSuchCORSConfiguration, NoSuchLifecycleConfiguration,
                     NoSuchWebsiteConfiguration, ObjectLockConfigurationNotFoundError,
                     ReplicationConfigurationNotFoundError, S3Error,
                     ServerSideEncryptionConfigurationNotFoundError)
from .xmlio import NS

__all__ = ["GET_OPERATIONS", "DELETE_OPERATIONS", "answer"]


def _document(root: str, content: str = "") -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}">{content}</{root}>'.encode()


#: Sub-resource -> (GET operation, the answer: the S3 error for "none" or the document).
_ANSWERS: dict[str, tuple[str, type[S3Error] | bytes]] = {
    "policy": ("GetBucketPolicy", NoSuchBucketPolicy),
    # Whether the policy makes the bucket public: with no policy, S3 answers NoSuchBucketPolicy
    # (security scanners such as CloudQuery read it for every bucket).
    "policyStatus": ("GetBucketPolicyStatus", NoSuchBucketPolicy),
    "cors": ("GetBucketCors", NoSuchCORSConfiguration),
    "lifecycle": ("GetBucketLifecycleConfiguration", NoSuchLifecycleConfiguration),
    "website": ("GetBucketWebsite", NoSuchWebsiteConfiguration),
    "encryption": ("GetBucketEncryption", ServerSideEncryptionConfigurationNotFoundError),
    "replication": ("GetBucketReplication", ReplicationConfigurationNotFoundError),
    "object-lock": ("GetObjectLockConfiguration", ObjectLockConfigurationNotFoundError),
    "logging": ("GetBucketLogging", _document("BucketLoggingStatus")),
    "notification": ("GetBucketNotificationConfiguration", _document("NotificationConfiguration")),
    "accelerate": ("GetBucketAccelerateConfiguration", _document("AccelerateConfiguration")),
    "requestPayment": ("GetBucketRequestPayment", _document("RequestPaymentConfiguration",
                                                            "<Payer>BucketOwner</Payer>")),
    "ownershipControls": ("GetBucketOwnershipControls", _document(
        "OwnershipControls", "<Rule><ObjectOwnership>BucketOwnerEnforced</ObjectOwnership></Rule>")),
    "publicAccessBlock": ("GetPublicAccessBlock", _document(
        "PublicAccessBlockConfiguration",
        "<BlockPublicAcls>true</BlockPublicAcls><IgnorePublicAcls>true</IgnorePublicAcls>"
        "<BlockPublicPolicy>true</BlockPublicPolicy><RestrictPublicBuckets>true</RestrictPublicBuckets>")),
}

#: Sub-resource -> the GET operation answered from :data:`_ANSWERS`.
GET_OPERATIONS: dict[str, str] = {sub: name for sub, (name, _) in _ANSWERS.items()}

#: Sub-resource -> the DELETE operation: 204, nothing to delete.
DELETE_OPERATIONS: dict[str, str] = {
    "policy": "DeleteBucketPolicy", "cors": "DeleteBucketCors", "lifecycle": "DeleteBucketLifecycle",
    "website": "DeleteBucketWebsite", "encryption": "DeleteBucketEncryption",
    "replication": "DeleteBucketReplication", "publicAccessBlock": "DeletePublicAccessBlock",
    "ownershipControls": "DeleteBucketOwnershipControls",
}


def answer(sub: str, bucket: str) -> bytes:
    """GET ``?sub`` on ``bucket`` (its owner asking): the document, or raise the S3 error that
    says it has no such configuration."""
    _, found = _ANSWERS[sub]
    if isinstance(found, bytes):
        return found
    raise found(resource=f"/{bucket}", BucketName=bucket)
