"""The catalogue's records and the title's publish-state machine (sans-IO).

A title moves ``uploaded → transcoding → packaged → published``; any step can fail, a failed
title can be retried, a published one withdrawn and re-published. The table below is the whole
machine: :func:`check_transition` raises on anything else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .errors import IllegalTransition, InvalidTitle

__all__ = ["TitleState", "JobState", "Person", "Rendition", "TitleDraft", "Title", "Job", "Lease",
           "check_transition", "validate_draft", "TRANSITIONS", "MAX_TITLE_CHARS",
           "MAX_DESCRIPTION_CHARS", "MAX_PEOPLE"]

MAX_TITLE_CHARS = 300
MAX_DESCRIPTION_CHARS = 5000
MAX_PEOPLE = 100
MAX_NAME_CHARS = 200


class TitleState(str, enum.Enum):
    UPLOADED = "uploaded"
    TRANSCODING = "transcoding"
    PACKAGED = "packaged"
    PUBLISHED = "published"
    FAILED = "failed"
    WITHDRAWN = "withdrawn"


_S = TitleState
TRANSITIONS: dict[TitleState, frozenset[TitleState]] = {
    _S.UPLOADED: frozenset({_S.TRANSCODING, _S.FAILED, _S.WITHDRAWN}),
    # transcoding → transcoding: a retry of the job after a worker died restarts the state.
    _S.TRANSCODING: frozenset({_S.TRANSCODING, _S.PACKAGED, _S.FAILED, _S.WITHDRAWN}),
    _S.PACKAGED: frozenset({_S.PUBLISHED, _S.FAILED, _S.TRANSCODING, _S.WITHDRAWN}),
    _S.PUBLISHED: frozenset({_S.WITHDRAWN, _S.TRANSCODING}),
    _S.FAILED: frozenset({_S.TRANSCODING, _S.WITHDRAWN}),
    _S.WITHDRAWN: frozenset({_S.PUBLISHED, _S.TRANSCODING}),
}


def check_transition(old: TitleState, new: TitleState) -> None:
    """Raise :class:`IllegalTransition` unless ``old → new`` is in :data:`TRANSITIONS`."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"a title cannot go from {old.value} to {new.value}")


class JobState(str, enum.Enum):
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Person:
    """Someone credited on a title, with their role (``director``, ``cast``)."""

    name: str
    role: str = "cast"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendition:
    """One published rendition of a title (a rung of the ladder, or a manifest)."""

    name: str
    codec: str
    width: int = 0
    height: int = 0
    bitrate: int = 0
    path: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TitleDraft:
    """What a creator sends to create (or replace the metadata of) a title."""

    title: str
    description: str = ""
    category: str | None = None
    year: int | None = None
    language: str | None = None
    duration_s: float | None = None
    people: tuple[Person, ...] = ()
    upload: str | None = None
    owner: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Title:
    """A title as stored."""

    id: int
    title: str
    description: str
    category: str | None
    year: int | None
    language: str | None
    duration_s: float | None
    people: tuple[Person, ...]
    state: TitleState
    progress: float
    created: float
    updated: float
    renditions: tuple[Rendition, ...] = ()
    upload: str | None = None
    owner: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A job as stored."""

    id: int
    kind: str
    title_id: int | None
    key: str
    payload: dict = field(default_factory=dict)
    state: JobState
    attempts: int
    max_attempts: int
    run_at: float
    lease_expires: float | None
    leased_by: str | None
    last_error: str | None
    created: float
    updated: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A worker's hold on a job. ``token`` fences: it changes at every lease, so a worker whose
    lease expired and was taken by another can no longer heartbeat, complete or fail the job."""

    job: Job
    token: int
    worker: str
    expires: float


def validate_draft(d: TitleDraft) -> None:
    """Raise :class:`InvalidTitle` for metadata that breaks a rule."""
    if not d.title.strip():
        raise InvalidTitle("title is empty")
    if len(d.title) > MAX_TITLE_CHARS:
        raise InvalidTitle(f"title is longer than {MAX_TITLE_CHARS} characters")
    if len(d.description) > MAX_DESCRIPTION_CHARS:
        raise InvalidTitle(f"description is longer than {MAX_DESCRIPTION_CHARS} characters")
    if d.year is not None and not 1870 <= d.year <= 2200:
        raise InvalidTitle(f"year {d.year} is outside 1870..2200")
    if d.duration_s is not None and not 0 <= d.duration_s <= 7 * 24 * 3600:
        raise InvalidTitle("duration_s is outside 0..604800")
    if len(d.people) > MAX_PEOPLE:
        raise InvalidTitle(f"more than {MAX_PEOPLE} people")
    for p in d.people:
        if not p.name.strip() or len(p.name) > MAX_NAME_CHARS or len(p.role) > 40:
            raise InvalidTitle(f"bad person {p.name[:40]!r}")
    for name, value in (("category", d.category), ("language", d.language)):
        if value is not None and not (0 < len(value) <= 64):
            raise InvalidTitle(f"{name} must be 1..64 characters")
