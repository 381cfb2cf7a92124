"""S3 Object Lock request headers, sans-IO. The store has no Object Lock: no bucket is created
with it and no object carries a retention or a legal hold, so a write that asks for one must fail
rather than store an object any client can delete while its writer believes it locked (rclone's
``--s3-object-lock-mode COMPLIANCE`` for ransomware-proof backups, say).

- PutObject, CopyObject, CreateMultipartUpload, POST Object (its form fields) with ``x-amz-object-lock-mode``,
  ``x-amz-object-lock-retain-until-date`` or ``x-amz-object-lock-legal-hold``: what S3 answers
  for a bucket without an Object Lock configuration, 400 InvalidRequest "Bucket is missing Object
  Lock Configuration".
- CreateBucket with ``x-amz-bucket-object-lock-enabled: true`` (for a bucket it would make): 501
  NotImplemented, S3's code for "a header you provided implies functionality that is not
  implemented"; ``false`` is the default and passes.

GetObjectLockConfiguration answers 404 ObjectLockConfigurationNotFoundError, S3's answer for a
bucket without Object Lock, which every bucket here is (``bucketconfig``; it answered 501 before,
an error S3 never gives for that read). PutObjectLockConfiguration and PUT/GET
``?retention``/``?legal-hold`` answer NotImplemented (the gateway's router).
"""

from __future__ import annotations

from headwater.http.types import Headers

from .errors import InvalidRequest, NotImplemented, S3Error

__all__ = ["OBJECT_LOCK_PREFIX", "check_object_lock", "bucket_lock_error"]

OBJECT_LOCK_PREFIX = "x-amz-object-lock-"
_WRITES = frozenset({"PutObject", "CopyObject", "CreateMultipartUpload", "PostObject"})


def check_object_lock(operation: str, headers: Headers) -> None:
    """Raise InvalidRequest when an object write (``operation``, the routed S3 operation) asks
    for a retention or a legal hold."""
    if operation in _WRITES and any(name.lower().startswith(OBJECT_LOCK_PREFIX) for name, _ in headers):
        raise InvalidRequest("Bucket is missing Object Lock Configuration")


def bucket_lock_error(headers: Headers) -> S3Error | None:
    """The error a CreateBucket with these headers gets if it would make the bucket, or None."""
    value = headers.get("x-amz-bucket-object-lock-enabled")
    if value is not None and value.strip().lower() == "true":
        return NotImplemented("Object Lock is not supported: no bucket can be created with it.",
                              Header="x-amz-bucket-object-lock-enabled")
    return None
