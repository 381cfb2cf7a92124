"""The repair daemon's down-timers on disk: which storage nodes have failed every check since when.

Without it a restart of the repair daemon would start every down node's count afresh, and a
daemon that restarts more often than ``node_down_out_seconds`` would never declare a dead node
out (Ceph keeps the same fact, an OSD's down stamp, in its OSD map for the same reason).

The file is ``<repair data_dir>/node-liveness.json``::

    {"version": 1, "down": {"storage-3": {"since": 1764690000.5, "last": 1764690612.1}}}

``since`` and ``last`` are the first and the latest failed check of the node's current run, as
wall-clock seconds (:class:`liveness.DownRun`). It is replaced whole by an atomic write (a temp
file fsynced, renamed over the old one, the directory fsynced), so a crash leaves the old file
or the new one, never a torn one. It is small and bounded: one entry per storage node down, at
most :data:`MAX_NODES`, and a file larger than :data:`MAX_FILE_BYTES` is not read. A file that
does not parse is logged and ignored: the counts then start afresh, as they did before this
file existed.

:func:`encode` and :func:`decode` are pure; :class:`LivenessFile` does the (blocking) file I/O.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Collection, Mapping

from .liveness import DownRun

__all__ = ["LivenessFile", "encode", "decode", "FILE_NAME", "MAX_NODES", "MAX_FILE_BYTES"]

log = logging.getLogger("headwater.repair")

FILE_NAME = "node-liveness.json"
VERSION = 1
# A cluster has at most a few thousand storage nodes; anything beyond is not ours.
MAX_NODES = 4096
MAX_FILE_BYTES = 1024 * 1024


class LivenessFileError(ValueError):
    """The file is not a down-timer file this version can read."""


def encode(runs: Mapping[str, DownRun]) -> bytes:
    """The file's bytes for ``runs`` (at most :data:`MAX_NODES`, sorted by node)."""
    if len(runs) > MAX_NODES:
        raise LivenessFileError(f"{len(runs)} down nodes, at most {MAX_NODES} are kept")
    doc = {"version": VERSION,
           "down": {n: {"since": r.since, "last": r.last} for n, r in sorted(runs.items())}}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def decode(data: bytes, known: Collection[str] | None = None) -> dict[str, DownRun]:
    """The runs in a file's bytes; nodes not in ``known`` (when given: nodes since removed from
    cluster.toml) are left out. Raises LivenessFileError for anything else than what
    :func:`encode` writes."""
    if len(data) > MAX_FILE_BYTES:
        raise LivenessFileError(f"{len(data)} bytes, more than {MAX_FILE_BYTES}")
    try:
        doc: Any = json.loads(data)
    except ValueError as e:
        raise LivenessFileError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("down"), dict):
        raise LivenessFileError(f"not a version {VERSION} down-timer file")
    down = doc["down"]
    if len(down) > MAX_NODES:
        raise LivenessFileError(f"{len(down)} nodes, at most {MAX_NODES}")
    out: dict[str, DownRun] = {}
    for node, run in down.items():
        if not isinstance(run, dict):
            raise LivenessFileError(f"node {node!r}: not a table")
        since, last = run.get("since"), run.get("last")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e12
                   for v in (since, last)):
            raise LivenessFileError(f"node {node!r}: since and last must be times in seconds")
        if known is None or node in known:
            out[node] = DownRun(since=float(since), last=float(last))
    return out


class LivenessFile:
    """The down-timer file at ``path`` (blocking I/O: call from a worker thread)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.writes = 0

    def load(self, known: Collection[str] | None = None) -> dict[str, DownRun]:
        """The runs kept, or none if there is no file or it cannot be read (logged)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
            return decode(data, known)
        except FileNotFoundError:
            return {}
        except (OSError, LivenessFileError) as e:
            log.warning("repair: %s ignored, down-timers start afresh: %s", self.path, e,
                        extra={"event": "repair.liveness_file_ignored", "path": str(self.path), "error": str(e)})
            return {}

    def save(self, runs: Mapping[str, DownRun]) -> None:
        """Replace the file with ``runs``, atomically and durably. Raises OSError."""
        data = encode(runs)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.writes += 1
