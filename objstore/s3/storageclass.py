"""The ``x-amz-storage-class`` request header, sans-IO.

Every object here is kept one way (the cluster's erasure code), reported as STANDARD in HEAD and
listings. A write naming any storage class of S3's list is accepted and stored that one way, so
tools configured for a cheaper class (rclone's ``--s3-storage-class``, the AWS CLI's
``--storage-class``) keep working; a name that is not on the list is refused as S3 refuses it,
400 InvalidStorageClass, instead of being stored as if it meant something.
"""

from __future__ import annotations

from headwater.http.types import Headers

from .errors import InvalidStorageClass

__all__ = ["STORAGE_CLASSES", "check_storage_class"]

#: The S3 API reference's valid values of x-amz-storage-class (PutObject, CopyObject,
#: CreateMultipartUpload).
STORAGE_CLASSES = frozenset({
    "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER",
    "DEEP_ARCHIVE", "OUTPOSTS", "GLACIER_IR", "SNOW", "EXPRESS_ONEZONE", "FSX_OPENZFS", "FSX_ONTAP",
})

_WRITES = frozenset({"PutObject", "CopyObject", "CreateMultipartUpload"})


def check_storage_class(operation: str, headers: Headers) -> None:
    """Raise InvalidStorageClass when a write names a storage class S3 does not have."""
    if operation not in _WRITES:
        return
    value = headers.get("x-amz-storage-class")
    if value is not None and value.strip() not in STORAGE_CLASSES:
        raise InvalidStorageClass(StorageClassRequested=value.strip())
