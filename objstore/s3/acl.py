"""Access control lists on writes (``x-amz-acl``, ``x-amz-grant-*``), answered as S3 answers them
for a bucket whose Object Ownership is "bucket owner enforced", sans-IO.

Here every bucket and object is its owner's alone: ACLs are not kept. New S3 buckets work the
same way since April 2023 (ACLs disabled, Block Public Access on), and S3 then refuses a write
whose ACL would grant anyone else access instead of storing the object without it ("Troubleshooting
Object Ownership", AccessControlListNotSupported). So does the gateway: an upload asked to be
``public-read`` must fail, not be stored private while the client believes it public.

- PutObject, CopyObject, CreateMultipartUpload: a canned ACL that grants only the owner
  (``private``, ``bucket-owner-full-control``, ``bucket-owner-read``: the writer owns the bucket)
  is accepted, it being what is stored anyway; any other canned ACL or any ``x-amz-grant-*``
  header is 400 AccessControlListNotSupported. An enforced S3 bucket takes only
  ``bucket-owner-full-control``; ``private`` passes here too because rclone's common
  ``acl = private`` sends it on CreateBucket and every write, and S3 makes a bucket created with
  ``x-amz-acl: private`` one whose ACLs are enabled ("bucket owner preferred"), where it passes.
- CreateBucket: ``private`` is accepted (S3 accepts it too; rclone sends its ``acl`` on
  CreateBucket unless ``bucket_acl`` says otherwise); another canned ACL or a grant is 400
  InvalidBucketAclWithObjectOwnership for a bucket that would be made. The name is judged first:
  re-creating one's own bucket answers as it does without an ACL (rclone "creates" the bucket
  before a copyto, with the object's ACL), another's bucket BucketAlreadyExists.
- A canned ACL that is none of S3's is 400 InvalidArgument.
"""

from __future__ import annotations

from headwater.http.types import Headers

from .errors import (AccessControlListNotSupported, InvalidArgument, InvalidBucketAclWithObjectOwnership,
                     S3Error)

__all__ = ["CANNED_ACLS", "check_acl", "bucket_acl_error"]

#: S3's canned ACLs (the user guide's "Canned ACL" table).
CANNED_ACLS = frozenset({"private", "public-read", "public-read-write", "aws-exec-read", "authenticated-read",
                         "bucket-owner-read", "bucket-owner-full-control", "log-delivery-write"})
_OWNER_ONLY_OBJECT = frozenset({"private", "bucket-owner-read", "bucket-owner-full-control"})
_OWNER_ONLY_BUCKET = frozenset({"private"})
_OBJECT_WRITES = frozenset({"PutObject", "CopyObject", "CreateMultipartUpload"})
GRANT_PREFIX = "x-amz-grant-"


def _refusal(headers: Headers, owner_only: frozenset[str], refused: type[S3Error]) -> S3Error | None:
    canned = headers.get("x-amz-acl")
    if canned is not None:
        canned = canned.strip()
        if canned not in CANNED_ACLS:
            return InvalidArgument(None, ArgumentName="x-amz-acl", ArgumentValue=canned)
        if canned not in owner_only:
            return refused()
    if any(name.lower().startswith(GRANT_PREFIX) for name, _ in headers):
        return refused()
    return None


def check_acl(operation: str, headers: Headers) -> None:
    """Raise the S3 error for an ACL that an object write (``operation``, the routed S3
    operation) cannot keep; other operations pass (CreateBucket: :func:`bucket_acl_error`)."""
    if operation in _OBJECT_WRITES:
        err = _refusal(headers, _OWNER_ONLY_OBJECT, AccessControlListNotSupported)
        if err is not None:
            raise err


def bucket_acl_error(headers: Headers) -> S3Error | None:
    """The error a CreateBucket with these headers gets if it would make the bucket, or None."""
    return _refusal(headers, _OWNER_ONLY_BUCKET, InvalidBucketAclWithObjectOwnership)
