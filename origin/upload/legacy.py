"""The upload records of the versions before issue 14, brought over once: they were in an LMDB
environment under ``<data_dir>/uploads`` and the bytes past the last part in the local spool
(``<data_dir>/spool/<id>.<generation>``, fsynced); now the records are in the catalogue's
database and those bytes in the store (:mod:`.service`).

At start, before the spool is emptied, each old record that the database does not hold is
inserted, its spooled bytes first PUT to the store as the incomplete part's one segment; then
the LMDB folder is renamed ``uploads.imported`` so this happens once. A spool file shorter than
its record (it cannot be, the old service refused to start on one) is imported as far as the
record's stored parts: the client resumes from there. If the store does not answer the origin
does not start (the old spool would otherwise be emptied with bytes acknowledged in it).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import replace
from pathlib import Path

import anyio

from .records import UploadRecords
from .s3 import MultipartStore
from .tus import UploadState

__all__ = ["import_lmdb_records"]

log = logging.getLogger("headwater.origin.upload")


def _read_lmdb(state_dir: Path) -> list[UploadState]:
    import lmdb

    env = lmdb.open(str(state_dir), readonly=True, lock=False, subdir=True, max_dbs=1)
    try:
        with env.begin() as txn:
            return [UploadState.from_record(json.loads(raw)) for _, raw in txn.cursor()]
    finally:
        env.close()


async def import_lmdb_records(state_dir: Path, spool_dir: Path, records: UploadRecords,
                              store: MultipartStore) -> int:
    """Bring the old LMDB records under ``state_dir`` into ``records`` (see the module
    docstring); how many were imported (0 when there is nothing to import)."""
    if not (state_dir / "data.mdb").exists():
        return 0
    imported = 0
    for st in await anyio.to_thread.run_sync(_read_lmdb, state_dir):
        if await anyio.to_thread.run_sync(records.get, st.id) is not None:
            continue  # an earlier start imported it and stopped before the rename
        if not st.finished and st.spooled:
            spool = spool_dir / f"{st.id}.{st.spool_gen}"
            try:
                data = spool.read_bytes()[:st.spooled]
            except FileNotFoundError:
                data = b""
            if len(data) == st.spooled:
                key = f"incomplete/{st.id}/{st.spool_gen}.{secrets.token_hex(6)}"
                await store.put_object(key, data)
                st = replace(st, segments=((key, len(data)),))
            else:
                log.warning("upload %s: its spool holds %d of %d bytes: imported at offset %d", st.id,
                            len(data), st.spooled, st.stored, extra={"event": "origin.legacy_spool_short"})
                st = replace(st, spooled=0, segments=())
        await anyio.to_thread.run_sync(records.insert, st)
        imported += 1
    state_dir.rename(state_dir.with_name(state_dir.name + ".imported"))
    log.info("origin: %d upload records brought over from %s", imported, state_dir,
             extra={"event": "origin.legacy_imported", "records": imported})
    return imported
