"""Upload records on LMDB under the origin's data dir: one JSON record per upload, keyed by its
id, written in one transaction per state change (so a record is always one consistent state:
the parts named are durable in the store, the spooled count is fsynced in the spool file).

The map is ``[origin] state_map_size``: a write that does not fit is
:class:`~headwater.origin.errors.InsufficientStorage` (507, naming the key), never a 500; the
janitor frees the records of uploads completed more than ``upload_retention_seconds`` ago."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import lmdb

from ..errors import InsufficientStorage
from .tus import UploadState

__all__ = ["UploadRecords"]


class UploadRecords:
    """Every upload's :class:`UploadState`, by id."""

    def __init__(self, path: Path, *, map_size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.map_size = map_size
        self.env = lmdb.open(str(path), map_size=map_size, max_dbs=1, subdir=True, lock=True)

    def _full(self) -> InsufficientStorage:
        return InsufficientStorage(f"the upload records are full (state_map_size, {self.map_size} bytes): "
                                   "retry after finished uploads' records are retired, or raise state_map_size")

    def close(self) -> None:
        self.env.close()

    def get(self, upload_id: str) -> UploadState | None:
        with self.env.begin() as txn:
            raw = txn.get(upload_id.encode())
        return None if raw is None else UploadState.from_record(json.loads(raw))

    def put(self, state: UploadState) -> None:
        try:
            with self.env.begin(write=True) as txn:
                txn.put(state.id.encode(), json.dumps(state.to_record(), separators=(",", ":")).encode())
        except lmdb.MapFullError:
            raise self._full() from None

    def delete(self, upload_id: str) -> None:
        try:
            with self.env.begin(write=True) as txn:
                txn.delete(upload_id.encode())
        except lmdb.MapFullError:  # copy-on-write: even a delete needs free pages
            raise self._full() from None

    def __iter__(self) -> Iterator[UploadState]:
        with self.env.begin() as txn:
            for _, raw in txn.cursor():
                yield UploadState.from_record(json.loads(raw))

    def count(self) -> int:
        with self.env.begin() as txn:
            return txn.stat()["entries"]
