"""Version prefixes to delete: the catalogue's record of them (sans-IO parts).

The transcoder writes each attempt of each job under its own prefix ``titles/T/v<job>-<attempt>/``
(``transcode/worker.py``). Two kinds of prefix outlive their use: a title's **superseded**
version (a later publish named another folder) and a **dead** or **failed** attempt's prefix (a
worker killed mid-job, or a failure whose own clean-up may not have finished). The catalogue
records each in ``retired_versions`` in the transaction that retires it (the publish, the lease
that takes a dead attempt's job over, the failure), so no crash between the two can lose a
prefix to delete; the sweep (``transcode/versions.py``) deletes it once the retention has passed
and removes the row after the prefix lists empty.

Only a strict ``titles/<id>/v<n>[-<m>]/`` folder is ever recorded or swept, and the title in it is
the record's: a prefix of another title, a shorter one (``titles/T/``) or one naming no version
cannot come out of this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

__all__ = ["RetiredVersion", "SUPERSEDED", "DEAD", "FAILED", "REASONS", "version_folder", "parse_version_prefix",
           "attempt_prefix"]

#: a title's earlier version, replaced by a later publish
SUPERSEDED = "superseded"
#: an attempt whose worker stopped answering (its lease expired and was taken over, or the job died)
DEAD = "dead"
#: an attempt that failed and was handed back (its own clean-up may not have finished)
FAILED = "failed"
REASONS = (SUPERSEDED, DEAD, FAILED)

_FOLDER = re.compile(r"titles/([1-9][0-9]{0,17})/v([1-9][0-9]{0,17})(?:-([1-9][0-9]{0,5}))?/")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetiredVersion:
    """One prefix to delete: whose (``title_id``; ``job_id`` and ``attempt`` when the prefix is
    an attempt's), why (:data:`REASONS`), since when (wall clock; the retention counts from
    it), and the sweep holding it (``claimed_by`` until ``claimed_until``)."""

    prefix: str
    title_id: int
    job_id: int | None
    attempt: int | None
    reason: str
    since: float
    claimed_by: str | None = None
    claimed_until: float = 0.0


def attempt_prefix(title_id: int, job_id: int, attempt: int) -> str:
    """``titles/T/v<job>-<attempt>/``: the folder one attempt of one transcode job writes."""
    return f"titles/{title_id}/v{job_id}-{attempt}/"


def parse_version_prefix(prefix: str) -> tuple[int, int | None, int | None] | None:
    """(title, job, attempt) of exactly ``titles/T/v<job>[-<attempt>]/``, else None (anything
    longer or shorter, another spelling of a number, a path with more after the folder)."""
    m = _FOLDER.fullmatch(prefix)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), None if m.group(3) is None else int(m.group(3))


def version_folder(title_id: int, path: str) -> str | None:
    """The ``titles/T/vN/`` folder holding a rendition's object key ``path``, if it is one of
    title ``title_id``'s; else None."""
    m = _FOLDER.match(path)
    if m is None or int(m.group(1)) != title_id or len(path) == m.end():
        return None
    return m.group(0)


def folders(title_id: int, paths: Iterable[str]) -> set[str]:
    """The version folders ``paths`` (a title's renditions') lie in."""
    return {f for f in (version_folder(title_id, p) for p in paths) if f is not None}
