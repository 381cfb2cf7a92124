"""Errors of the metadata service: one root, each class carrying its S3 mapping.

The gateway maps a :class:`MetadataError` to the wire in one place with ``s3_code`` and
``http_status``; nothing else about these classes is wire-specific. ``ConditionFailed`` maps to
412 PreconditionFailed, the answer to a failed ``If-None-Match: *`` or ``If-Match``; for
CreateBucket the gateway turns it into BucketAlreadyExists / BucketAlreadyOwnedByYou itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from headwater.rpc import RpcError, register_error

if TYPE_CHECKING:
    from .client import Entry

from ..errors import StoreError

__all__ = [
    "MetadataError",
    "ConditionFailed",
    "QuorumUnavailable",
    "NOT_STORED",
    "WriteConflict",
    "WriteOutcomeUnknown",
    "NotLeaderError",
    "NotStoredError",
    "InvalidKey",
    "KeyTooLong",
    "CorruptRecord",
    "CorruptGroup",
    "StoreFull",
    "DataDirError",
    "RingChanged",
]


class MetadataError(StoreError):
    """Root of every error the metadata service raises."""

    s3_code = "InternalError"
    http_status = 500
    log_level = logging.WARNING
    log_event = "s3.metadata_error"


class ConditionFailed(MetadataError):
    """A conditional put or delete found a record that does not satisfy its condition.

    ``current`` is the live entry the condition was checked against (None when there is none).
    """

    s3_code = "PreconditionFailed"
    http_status = 412

    def __init__(self, ns: str, key: str, current: Entry | None, condition: str):
        self.ns = ns
        self.key = key
        self.current = current
        self.condition = condition
        state = "absent" if current is None else f"present at version {current.version}"
        super().__init__(f"{ns}/{key!r}: condition {condition} failed, record is {state}")


class QuorumUnavailable(MetadataError):
    """Fewer than a majority of a partition's replicas answered; the outcome of a write is unknown."""

    s3_code = "ServiceUnavailable"
    http_status = 503

    def __init__(self, what: str, *, needed: int, answered: int, errors: dict[str, Any] | None = None):
        self.needed = needed
        self.answered = answered
        self.errors = dict(errors or {})
        detail = ", ".join(f"{n}: {e!r}" for n, e in sorted(self.errors.items()))
        super().__init__(f"{what}: {answered} of the {needed} replicas needed answered"
                         + (f" ({detail})" if detail else ""))


class WriteOutcomeUnknown(MetadataError):
    """A write was handed to a leader but no answer came back in time (the leader died, or lost
    its majority): it may still commit. Unlike QuorumUnavailable, something may be stored."""

    s3_code = "ServiceUnavailable"
    http_status = 503


@register_error
class NotLeaderError(RpcError):
    """On the wire: the node asked is not its group's leader. ``leader`` names the one it
    believes leads, if any; the client retries there. Nothing was stored."""

    code = "not_leader"
    retryable = True


@register_error
class NotStoredError(RpcError):
    """On the wire: the write's log entry was replaced by another leader's; nothing was stored."""

    code = "not_stored"
    retryable = True


class WriteConflict(MetadataError):
    """A conditional write kept meeting concurrent writes to the same key; the caller may retry.

    S3 answers a conditional write that loses to a concurrent one with 409
    ConditionalRequestConflict.
    """

    s3_code = "ConditionalRequestConflict"
    http_status = 409


class InvalidKey(MetadataError):
    """A namespace or key that cannot be stored (not valid UTF-8, NUL in a namespace, empty)."""

    s3_code = "InvalidArgument"
    http_status = 400


class KeyTooLong(InvalidKey):
    """A key or namespace longer than the store accepts."""

    s3_code = "KeyTooLongError"
    http_status = 400


class CorruptRecord(MetadataError):
    """A record on one node failed its checksum; the other replicas still hold it."""

    def __init__(self, where: str):
        self.where = where
        super().__init__(f"record {where} failed its checksum")


class CorruptGroup(CorruptRecord):
    """An overflow group (the keys too long for LMDB sharing one prefix) failed its checksum:
    several records are unreadable on this node at once."""


class StoreFull(MetadataError):
    """The node's LMDB map is full (raise ``map_size`` in cluster.toml)."""

    s3_code = "ServiceUnavailable"
    http_status = 503


class DataDirError(MetadataError):
    """The node's data directory cannot be created, written or opened as an LMDB environment."""


class RingChanged(DataDirError):
    """cluster.toml's ``partitions`` or ``metadata_groups`` differ from those the ring was formed
    with, or the data_dir was written in an earlier format: groups are never split or merged, so
    the node refuses to start rather than serve partitions from groups that do not hold them."""


#: Errors after which a write provably stored nothing (a failed quorum write is reverted).
NOT_STORED = (ConditionFailed, QuorumUnavailable, WriteConflict)

