"""A title on the wire, sans-IO: the fields a creator may send (checked for names and types
before the catalogue checks their values), and the JSON a title is answered as.

Request fields (``POST /api/titles``: ``title`` and ``upload`` required; ``PATCH``: any of them
but ``upload``)::

    title        string
    description  string
    category     string or null      (a slug: "drama")
    year         integer or null
    language     string or null      (a code: "en")
    duration_s   number or null      (seconds)
    people       list of "Name" or {"name": "Name", "role": "director"}
    upload       string              (the tus upload id: the last part of its Location)
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Mapping

from ..catalogue import Person, Title, TitleDraft
from ..delivery.published import publication_of
from ..errors import InvalidJson

__all__ = ["parse_create", "parse_patch", "draft_of", "title_json", "iso_time"]

_STR = {"title", "description"}
_OPTIONAL_STR = {"category", "language"}
_CREATE = _STR | _OPTIONAL_STR | {"year", "duration_s", "people", "upload"}
_PATCH = _CREATE - {"upload"}


def _check(doc: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise InvalidJson(f"unknown field {unknown[0][:40]!r} (fields: {', '.join(sorted(allowed))})")
    for key, value in doc.items():
        if key in _STR or key == "upload":
            ok = isinstance(value, str)
        elif key in _OPTIONAL_STR:
            ok = value is None or isinstance(value, str)
        elif key == "year":
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        elif key == "duration_s":
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        else:  # people
            ok = isinstance(value, list)
        if not ok:
            raise InvalidJson(f"{key}: wrong type ({_TYPES[key]} expected)")


_TYPES = {"title": "a string", "description": "a string", "upload": "a string", "category": "a string or null",
          "language": "a string or null", "year": "an integer or null", "duration_s": "a number or null",
          "people": "a list"}


def _people(value: list[Any]) -> tuple[Person, ...]:
    out = []
    # At most ~16k entries fit in a 64 KiB body; the catalogue refuses more than 100 (422).
    for i, p in enumerate(value):
        if isinstance(p, str):
            out.append(Person(name=p))
        elif isinstance(p, dict) and set(p) <= {"name", "role"} and isinstance(p.get("name"), str) \
                and isinstance(p.get("role", "cast"), str):
            out.append(Person(name=p["name"], role=p.get("role", "cast")))
        else:
            raise InvalidJson(f'people[{i}]: a name, or {{"name": ..., "role": ...}}')
    return tuple(out)


def _fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    if "people" in out:
        out["people"] = _people(out["people"])
    if out.get("duration_s") is not None:
        out["duration_s"] = float(out["duration_s"])
    return out


def parse_create(doc: Mapping[str, Any]) -> TitleDraft:
    """The draft a ``POST /api/titles`` body describes (owner unset), or :class:`InvalidJson`."""
    _check(doc, _CREATE)
    for key in ("title", "upload"):
        if key not in doc:
            raise InvalidJson(f"{key} is required")
    return TitleDraft(**_fields(doc))


def parse_patch(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a ``PATCH`` body changes, or :class:`InvalidJson`."""
    if "upload" in doc:
        raise InvalidJson("upload cannot be changed: post a new title for a new upload")
    _check(doc, _PATCH)
    return _fields(doc)


def draft_of(title: Title, changes: Mapping[str, Any]) -> TitleDraft:
    """``title``'s metadata with ``changes`` applied."""
    base = TitleDraft(title=title.title, description=title.description, category=title.category, year=title.year,
                      language=title.language, duration_s=title.duration_s, people=title.people,
                      upload=title.upload, owner=title.owner)
    return replace(base, **changes)


def iso_time(t: float) -> str:
    """RFC 3339 UTC, to the second."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def title_json(title: Title, *, owner_view: bool, media_base_url: str = "") -> dict[str, Any]:
    """The title as the API answers it; ``owner_view`` adds what only its owner sees (owner,
    upload, and the error of a failed title).

    ``poster`` and ``thumbnails`` (the WebVTT thumbnail track) are the published version's
    files under ``media_base_url`` (the CDN's URL; "" gives the path the origin serves them
    on), null unless the title is published. Unsigned: where the CDN checks signatures a player
    appends /play's ``cdn.query``, or takes /play's own signed ``poster`` and ``thumbnails``."""
    pub = publication_of(title)
    doc: dict[str, Any] = {
        "id": title.id, "title": title.title, "description": title.description, "category": title.category,
        "year": title.year, "language": title.language, "duration_s": title.duration_s,
        "people": [{"name": p.name, "role": p.role} for p in title.people],
        "state": title.state.value, "progress": int(round(title.progress * 100)),
        "error": title.error if owner_view else None,
        "renditions": [{"name": r.name, "codec": r.codec, "width": r.width, "height": r.height,
                        "bitrate": r.bitrate, "path": r.path} for r in title.renditions],
        "poster": f"{media_base_url}/{pub.poster}" if pub.poster else None,
        "thumbnails": f"{media_base_url}/{pub.thumbnails}" if pub.thumbnails else None,
        "created": iso_time(title.created), "updated": iso_time(title.updated),
    }
    if owner_view:
        doc["owner"] = title.owner
        doc["upload"] = title.upload
    return doc
