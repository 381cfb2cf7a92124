"""The metadata service: a partitioned, replicated, sorted key-value store on LMDB.

The gateway uses :class:`MetadataClient`; :func:`run_metadata_node` is the daemon. The names
below are imported on first use (``headwater.lazy``), so reading one small module of the
package (``partition``) does not start up Raft.
"""

from headwater.lazy import lazy_exports

_EXPORTS = {
    "Entry": ".client", "MetadataClient": ".client",
    "MetadataNode": ".node", "run_metadata_node": ".node",
    "PartitionMap": ".partition",
    **{name: ".errors" for name in (
        "MetadataError", "ConditionFailed", "QuorumUnavailable", "WriteConflict", "WriteOutcomeUnknown",
        "InvalidKey", "KeyTooLong", "CorruptRecord", "StoreFull", "DataDirError")},
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
