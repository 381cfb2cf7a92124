"""Where packaged files go: the sink interface and a local-folder sink.

A packaging run ``put``\\ s every file (``video-1/init.mp4``, ``video-1/seg-1.m4s``, manifests)
and then either ``commit``\\ s (everything becomes visible) or ``abort``\\ s (nothing does). A
sink must never show a reader a half-packaged title: :class:`LocalFolderSink` writes into a
hidden staging folder beside the destination and moves the files into place only on commit;
an object-store sink would upload under a staging prefix or publish a manifest last.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

__all__ = ["SegmentSink", "LocalFolderSink", "check_name"]


class SegmentSink(Protocol):
    """Receives a packaging run's files; nothing is visible to readers before :meth:`commit`."""

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name`` (a relative, ``/``-separated path)."""

    def commit(self) -> None:
        """Publish everything put so far."""

    def abort(self) -> None:
        """Drop everything put so far; nothing of this run remains."""


def check_name(name: str) -> str:
    """``name`` if it is a safe relative path (no empty, ``.`` or ``..`` parts, not absolute),
    else ValueError."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) \
            or "\\" in name or "\x00" in name:
        raise ValueError(f"unsafe output name {name!r}")
    return name


class LocalFolderSink:
    """Files under ``root``. Writes go to ``root/.staging-*`` (created on the first put, so a
    run that fails before writing leaves nothing at all); ``commit`` moves each file into place
    and removes the staging folder; ``abort`` removes it. With ``fsync`` each file and the
    folders it lands in are flushed to disk before ``commit`` returns."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._staging: Path | None = None
        self._names: dict[str, None] = {}     # insertion-ordered set; a re-put replaces

    def put(self, name: str, data: bytes) -> None:
        check_name(name)
        if self._staging is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        path = self._staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        self._names[name] = None

    def commit(self) -> None:
        if self._staging is None:
            return
        folders = set()
        for name in self._names:
            final = self.root / name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._staging / name, final)
            folders.add(final.parent)
        if self.fsync:
            for folder in folders | {self.root}:
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None
        self._names = {}

    def abort(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None
        self._names = {}
