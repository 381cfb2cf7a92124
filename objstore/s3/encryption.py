"""Server-side encryption with customer-provided keys (SSE-C) headers, answered as S3 answers
them for a bucket where SSE-C is blocked, sans-IO.

The gateway does not encrypt with a customer's key. A write that asks for it must not be stored
in the clear as if it had been (a client would then believe its key guards the bytes, and any
reader without the key would get them). S3 answers such writes the same way for its own buckets
since April 2026, when it blocked SSE-C for every new general purpose bucket (the bucket's
``BlockedEncryptionTypes``, "Blocking or unblocking SSE-C for a general purpose bucket"):

- PutObject, CopyObject and CreateMultipartUpload with ``x-amz-server-side-encryption-customer-*``
  headers: 403 AccessDenied;
- a read or part upload naming an SSE-C key (``x-amz-server-side-encryption-customer-*`` on
  GetObject, HeadObject, UploadPart or UploadPartCopy; the ``x-amz-copy-source-`` form of them
  on CopyObject or UploadPartCopy): no object here is encrypted with one, and S3 answers a key
  given for an object not encrypted with it 400 InvalidRequest, "The encryption parameters are
  not applicable to this object."

SSE-S3 and SSE-KMS (``x-amz-server-side-encryption`` AES256, aws:kms, aws:kms:dsse) are not
refused; docs/s3-compat.md says what the gateway does with them. Any other value is S3's 400
InvalidArgument, "The encryption method specified is not supported".
"""

from __future__ import annotations

from headwater.http.types import Headers

from .errors import AccessDenied, InvalidArgument, InvalidRequest

__all__ = ["SSE_C_PREFIX", "COPY_SOURCE_SSE_C_PREFIX", "NOT_APPLICABLE", "SSE_METHODS", "check_write",
           "check_key_for"]

SSE_C_PREFIX = "x-amz-server-side-encryption-customer-"
COPY_SOURCE_SSE_C_PREFIX = "x-amz-copy-source-server-side-encryption-customer-"

#: Operations that write an object (or begin writing one) with the encryption they name.
_WRITES = frozenset({"PutObject", "CopyObject", "CreateMultipartUpload"})

NOT_APPLICABLE = "The encryption parameters are not applicable to this object."

#: The values of x-amz-server-side-encryption S3 knows (SSE-S3, SSE-KMS, DSSE-KMS).
SSE_METHODS = frozenset({"AES256", "aws:kms", "aws:kms:dsse"})


def _names(headers: Headers, prefix: str) -> bool:
    return any(name.lower().startswith(prefix) for name, _ in headers)


def check_write(operation: str, headers: Headers) -> None:
    """Raise AccessDenied when ``operation`` (the routed S3 operation's name) writes with SSE-C,
    and S3's InvalidArgument for an ``x-amz-server-side-encryption`` that names no method S3 has."""
    if operation not in _WRITES:
        return
    if _names(headers, SSE_C_PREFIX):
        raise AccessDenied("Server-side encryption with customer-provided keys (SSE-C) is blocked for this "
                           "bucket: this store does not encrypt objects with a customer's key.")
    method = headers.get("x-amz-server-side-encryption")
    if method is not None and method.strip() not in SSE_METHODS:
        raise InvalidArgument("The encryption method specified is not supported",
                              ArgumentName="x-amz-server-side-encryption", ArgumentValue=method.strip())


def check_key_for(headers: Headers, *, copy_source: bool = False) -> None:
    """Raise InvalidRequest when the request names an SSE-C key for an object (or an upload) that
    exists, none being encrypted with one. Called once it is known to exist: S3 answers a
    missing object 404 whatever keys the request carries (rclone HEADs a copy's destination
    with them). ``copy_source``: the key named for a copy's source."""
    if _names(headers, COPY_SOURCE_SSE_C_PREFIX if copy_source else SSE_C_PREFIX):
        raise InvalidRequest(NOT_APPLICABLE)
