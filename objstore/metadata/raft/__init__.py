"""Raft consensus for the metadata ring: the sans-IO core, its LMDB storage and its socket shell."""

from .core import NotLeader, RaftCore, Role, Timing
from .group import GroupSettings, NotStored, RaftGroup
from .storage import RaftStorage

__all__ = ["RaftCore", "Role", "Timing", "NotLeader", "RaftGroup", "GroupSettings", "NotStored", "RaftStorage"]
