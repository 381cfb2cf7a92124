"""The metadata service: a partitioned, replicated, sorted key-value store on LMDB.

The gateway uses :class:`MetadataClient`; :func:`run_metadata_node` is the daemon.
"""

from .client import Entry, MetadataClient
from .errors import (ConditionFailed, CorruptRecord, DataDirError, InvalidKey, KeyTooLong, MetadataError,
                     QuorumUnavailable, StoreFull, WriteConflict, WriteOutcomeUnknown)
from .node import MetadataNode, run_metadata_node
from .partition import PartitionMap

__all__ = [
    "Entry",
    "MetadataClient",
    "MetadataNode",
    "run_metadata_node",
    "PartitionMap",
    "MetadataError",
    "ConditionFailed",
    "QuorumUnavailable",
    "WriteConflict",
    "WriteOutcomeUnknown",
    "InvalidKey",
    "KeyTooLong",
    "CorruptRecord",
    "StoreFull",
    "DataDirError",
]
