"""The public URL of a published object, checked before anything else looks at it. Sans-IO.

Public URLs are object keys (the published layout: every file of a packaging run of title T is
``titles/T/vN/<file>`` in the videos bucket). :func:`parse_object_path` turns a request's raw
(still %-encoded) path into an :class:`ObjectPath` — the title, the version and the key — or
refuses it. It is deliberately stricter than the packager's names need, so that no spelling of a
path can name a key outside ``titles/T/vN/``:

* any ``%`` is refused (400): the packager's names are plain ASCII, so an encoded byte can only be
  an attempt to smuggle a ``/``, a ``.``, a NUL or a backslash past this check (``%2F``, ``%2e``,
  ``%00``); never decoding means the key is exactly the path;
* NUL, control characters, backslashes, empty, ``.`` and ``..`` segments, and paths longer than
  ``max_chars`` are refused (400);
* anything else that is not ``/titles/<id>/v<n>/<name>[/<name>...]`` with names of letters,
  digits, ``.``, ``_`` and ``-`` (not starting with ``.``), at most :data:`MAX_DEPTH` folders
  deep, is simply not an object here (404).

:func:`object_kind` and :func:`content_type` say what an object is by its extension.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadRequest, NotFound

__all__ = ["ObjectPath", "parse_object_path", "object_kind", "content_type", "is_object_path", "PREFIX",
           "MAX_DEPTH", "MANIFEST", "IMMUTABLE", "version_of_key", "POSTER_NAME", "THUMBNAILS_NAME"]

PREFIX = "/titles/"
MAX_DEPTH = 4  # folders below the version prefix (video-1/p2/init.mp4 is 2)
MANIFEST = "manifest"
IMMUTABLE = "immutable"
# Beside the manifests in every version the transcoder publishes (its poster module writes them):
# the title's poster and its WebVTT thumbnail track, whose cues name sprites relative to it.
POSTER_NAME = "poster.jpg"
THUMBNAILS_NAME = "thumbs/thumbs.vtt"

_NAME = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
# A version is the transcode job's id and the attempt that made it ("12-2": job 12, attempt 2,
# so a dead attempt's leftovers and the next attempt's files never share a folder); a plain job
# id ("12") is accepted too.
_VERSION = r"[1-9][0-9]{0,17}(?:-[1-9][0-9]{0,5})?"
_PATH = re.compile(rf"/titles/([1-9][0-9]{{0,17}})/v({_VERSION})/((?:{_NAME}/){{0,{MAX_DEPTH}}}{_NAME})")
_KEY = re.compile(rf"titles/([1-9][0-9]{{0,17}})/v({_VERSION})/[^/]")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\%]")

_CONTENT_TYPES = {
    "mpd": "application/dash+xml",
    "m3u8": "application/vnd.apple.mpegurl",
    "m4s": "video/iso.segment",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "m4a": "audio/mp4",
    "cmfv": "video/mp4",
    "cmfa": "audio/mp4",
    "ts": "video/mp2t",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "vtt": "text/vtt; charset=utf-8",
    "webm": "video/webm",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectPath:
    """A well-formed public URL: ``key`` is the object key in the videos bucket."""

    title_id: int
    version: str  # "12-2": job 12's second attempt (see _VERSION)
    name: str  # the path below the version prefix

    @property
    def key(self) -> str:
        return f"titles/{self.title_id}/v{self.version}/{self.name}"


def is_object_path(path: str) -> bool:
    """True for every path this module decides on (``/titles/...``), well-formed or not."""
    return path.startswith(PREFIX)


def parse_object_path(path: str, *, max_chars: int = 1024) -> ObjectPath:
    """The object a raw request path names; :class:`BadRequest` or :class:`NotFound` (see the
    module docstring)."""
    if len(path) > max_chars:
        raise BadRequest(f"the path is longer than {max_chars} characters")
    if _FORBIDDEN.search(path):
        raise BadRequest("the path holds an encoded byte, a control character or a backslash")
    segments = path.split("/")[1:]
    if any(s in ("", ".", "..") for s in segments):
        raise BadRequest("the path has an empty, '.' or '..' segment")
    m = _PATH.fullmatch(path)
    if m is None:
        raise NotFound("no such object")
    return ObjectPath(title_id=int(m.group(1)), version=m.group(2), name=m.group(3))


def version_of_key(title_id: int, key: str) -> str | None:
    """N of an object key ``titles/<title_id>/vN/...`` (a rendition's path), else None."""
    m = _KEY.match(key)
    if m is None or int(m.group(1)) != title_id:
        return None
    return m.group(2)


def _extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def object_kind(name: str) -> str:
    """:data:`MANIFEST` for DASH and HLS manifests, else :data:`IMMUTABLE` (segments, init
    segments, posters, thumbnails: under a version prefix nothing ever changes)."""
    return MANIFEST if _extension(name) in ("mpd", "m3u8") else IMMUTABLE


# Containers that hold either kind of track: an audio rendition's folder is ``audio-<track>``
# (the packager's layout), and its files are the container's audio type.
_AUDIO_TYPES = {"mp4": "audio/mp4", "webm": "audio/webm"}


def content_type(name: str) -> str:
    """The media type by extension (``audio/...`` for an MP4 or WebM file in an audio
    rendition's folder); ``application/octet-stream`` for anything unknown."""
    extension = _extension(name)
    if extension in _AUDIO_TYPES and any(part.startswith("audio-") for part in name.split("/")[:-1]):
        return _AUDIO_TYPES[extension]
    return _CONTENT_TYPES.get(extension, "application/octet-stream")
