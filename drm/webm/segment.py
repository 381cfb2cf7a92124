"""A WebM rendition's DASH segments (the WebM profile of ISO/IEC 23009-1, as Shaka Packager and
ffmpeg's ``webm_chunk`` write them). Sans-IO.

- The init segment: the EBML header (DocType ``webm``), then a ``Segment`` of unknown size
  whose first children are ``Info`` (TimestampScale 1 ms) and ``Tracks`` (one ``TrackEntry``,
  with ``ContentEncodings`` when its frames are encrypted). The Segment stays open: the media
  segments are its next children.
- A media segment: one ``Cluster`` (its ``Timestamp``, in ms) of ``SimpleBlock`` s, the first a
  keyframe. Init segment + media segments in order is a playable WebM file.

Timestamps are milliseconds on the presentation timeline. Opus's priming (its pre-skip) is
``CodecDelay``: a block's timestamp minus CodecDelay is when it presents, as RFC 9559 has it.

:func:`read_init` and :func:`read_cluster` read such segments back (bounded, through
:mod:`.ebml`): a test checks what was written with them, and they refuse what this writer
never makes (lacing, several tracks) with :class:`~headwater.drm.errors.MalformedMedia` or
:class:`~headwater.drm.errors.UnsupportedMedia`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from headwater.drm.errors import MalformedMedia, UnsupportedMedia

from . import ebml
from .ids import (AUDIO, CHANNELS, CLUSTER, CODEC_DELAY, CODEC_ID, CODEC_PRIVATE, CONTENT_ENC_KEY_ID,
                  CONTENT_ENCODING, CONTENT_ENCODINGS, CONTENT_ENCRYPTION, DOC_TYPE, DOC_TYPE_READ_VERSION,
                  DOC_TYPE_VERSION, EBML, EBML_MAX_ID_LENGTH, EBML_MAX_SIZE_LENGTH, EBML_READ_VERSION, EBML_VERSION,
                  FLAG_LACING, INFO, LANGUAGE, MUXING_APP, PIXEL_HEIGHT, PIXEL_WIDTH, SAMPLING_FREQUENCY,
                  SEEK_PRE_ROLL, SEGMENT, SIMPLE_BLOCK, TIMESTAMP, TIMESTAMP_SCALE, TRACK_ENTRY, TRACK_NUMBER,
                  TRACK_TYPE, TRACK_TYPE_AUDIO, TRACK_TYPE_VIDEO, TRACK_UID, TRACKS, VIDEO, WRITING_APP)

__all__ = ["WebmTrack", "Block", "init_segment", "cluster", "read_init", "read_cluster", "TIMESTAMP_SCALE_NS",
           "MAX_RELATIVE_MS"]

TIMESTAMP_SCALE_NS = 1_000_000  # one tick of block and cluster timestamps: 1 ms
#: A SimpleBlock's timestamp is a signed 16-bit offset from its Cluster's.
MAX_RELATIVE_MS = 32767
_TRACK_NUMBER = 1
_KEYFRAME = 0x80
_LACING = 0x06
_APP = "headwater"


@dataclass(frozen=True, slots=True, kw_only=True)
class WebmTrack:
    """The one track of a WebM rendition: ``codec_id`` (``V_VP9``, ``A_OPUS``), video size or
    audio rate and channels, ``codec_private`` (Opus's ``OpusHead``), ``codec_delay_ns`` and
    ``seek_pre_roll_ns`` (Opus), ``encryption`` (the ``ContentEncodings`` element, when the
    frames are encrypted) and, read back, ``kid``."""

    kind: str
    codec_id: str
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    language: str = "und"
    codec_private: bytes = b""
    codec_delay_ns: int = 0
    seek_pre_roll_ns: int = 0
    encryption: bytes = b""
    kid: bytes = b""


@dataclass(frozen=True, slots=True)
class Block:
    """One frame: its timestamp (ms, absolute), whether it is a keyframe, its bytes."""

    timestamp_ms: int
    keyframe: bool
    frame: bytes | memoryview


def _ebml_header() -> bytes:
    return ebml.master(EBML, ebml.uint(EBML_VERSION, 1), ebml.uint(EBML_READ_VERSION, 1),
                       ebml.uint(EBML_MAX_ID_LENGTH, 4), ebml.uint(EBML_MAX_SIZE_LENGTH, 8),
                       ebml.string(DOC_TYPE, "webm"), ebml.uint(DOC_TYPE_VERSION, 4),
                       ebml.uint(DOC_TYPE_READ_VERSION, 2))


def init_segment(track: WebmTrack, *, track_uid: int = 1) -> bytes:
    """The init segment of a rendition of ``track``."""
    if track.kind not in ("video", "audio"):
        raise ValueError(f"a WebM track is video or audio, not {track.kind!r}")
    info = ebml.master(INFO, ebml.uint(TIMESTAMP_SCALE, TIMESTAMP_SCALE_NS), ebml.string(MUXING_APP, _APP),
                       ebml.string(WRITING_APP, _APP))
    parts = [ebml.uint(TRACK_NUMBER, _TRACK_NUMBER), ebml.uint(TRACK_UID, track_uid),
             ebml.uint(TRACK_TYPE, TRACK_TYPE_VIDEO if track.kind == "video" else TRACK_TYPE_AUDIO),
             ebml.uint(FLAG_LACING, 0), ebml.string(LANGUAGE, track.language or "und"),
             ebml.string(CODEC_ID, track.codec_id)]
    if track.codec_private:
        parts.append(ebml.element(CODEC_PRIVATE, track.codec_private))
    if track.codec_delay_ns:
        parts.append(ebml.uint(CODEC_DELAY, track.codec_delay_ns))
    if track.seek_pre_roll_ns:
        parts.append(ebml.uint(SEEK_PRE_ROLL, track.seek_pre_roll_ns))
    if track.kind == "video":
        parts.append(ebml.master(VIDEO, ebml.uint(PIXEL_WIDTH, track.width), ebml.uint(PIXEL_HEIGHT, track.height)))
    else:
        parts.append(ebml.master(AUDIO, ebml.float64(SAMPLING_FREQUENCY, float(track.sample_rate)),
                                 ebml.uint(CHANNELS, track.channels)))
    if track.encryption:
        parts.append(track.encryption)
    tracks = ebml.master(TRACKS, ebml.master(TRACK_ENTRY, *parts))
    return _ebml_header() + ebml.unknown_size_header(SEGMENT) + info + tracks


def cluster(blocks: Sequence[Block]) -> bytes:
    """One Cluster holding ``blocks`` (a media segment); its timestamp is the first block's."""
    if not blocks:
        raise ValueError("a cluster needs at least one block")
    base = blocks[0].timestamp_ms
    if base < 0:
        raise UnsupportedMedia(f"WebM: a cluster cannot start before 0 ({base} ms)")
    # Headers and frames as separate parts, joined once: each frame is copied once, into the
    # segment (a segment of 1080p frames is megabytes; every intermediate copy faulted in
    # fresh pages).
    parts: list[bytes | memoryview] = [ebml.uint(TIMESTAMP, base)]
    block_id = ebml.encode_id(SIMPLE_BLOCK)
    for b in blocks:
        relative = b.timestamp_ms - base
        if not -32768 <= relative <= MAX_RELATIVE_MS:
            raise UnsupportedMedia(f"WebM: a frame {relative} ms from its cluster's start (a segment longer "
                                   f"than {MAX_RELATIVE_MS / 1000:g} s)")
        header = bytes((0x80 | _TRACK_NUMBER,)) + relative.to_bytes(2, "big", signed=True) + \
            bytes((_KEYFRAME if b.keyframe else 0,))
        parts.append(block_id + ebml.encode_size(len(header) + len(b.frame)) + header)
        parts.append(b.frame)
    size = sum(len(p) for p in parts)
    return b"".join([ebml.encode_id(CLUSTER) + ebml.encode_size(size), *parts])


# --- reading back -----------------------------------------------------------------------------

def _string(buf: bytes | memoryview, e: ebml.Element) -> str:
    return bytes(buf[e.start:e.end]).rstrip(b"\0").decode("utf-8", "replace")


def read_init(buf: bytes | memoryview, limits: ebml.EbmlLimits = ebml.EbmlLimits()) -> WebmTrack:
    """The track of a WebM init segment (EBML header, Segment, Info, Tracks with one entry)."""
    top = list(ebml.iter_elements(buf, limits=limits))
    if len(top) != 2 or top[0].id != EBML or top[1].id != SEGMENT:
        raise MalformedMedia("WebM: an init segment is an EBML header then a Segment")
    doc = ebml.find(buf, top[0], DOC_TYPE, limits=limits)
    if doc is None or _string(buf, doc) != "webm":
        raise UnsupportedMedia("WebM: the EBML header's DocType is not webm")
    segment = list(ebml.children(buf, top[1], limits=limits))
    if not any(e.id == INFO for e in segment):
        raise MalformedMedia("WebM: the Segment has no Info")
    tracks = [e for e in segment if e.id == TRACKS]
    if len(tracks) != 1:
        raise MalformedMedia("WebM: the Segment needs one Tracks element")
    entries = [e for e in ebml.children(buf, tracks[0], limits=limits) if e.id == TRACK_ENTRY]
    if len(entries) != 1:
        raise UnsupportedMedia(f"WebM: {len(entries)} track entries (a DASH rendition has one)")
    fields: dict[str, object] = {}
    kind = ""
    for e in ebml.children(buf, entries[0], limits=limits):
        if e.id == TRACK_TYPE:
            kind = {TRACK_TYPE_VIDEO: "video", TRACK_TYPE_AUDIO: "audio"}.get(ebml.read_uint(buf, e), "")
        elif e.id == CODEC_ID:
            fields["codec_id"] = _string(buf, e)
        elif e.id == CODEC_PRIVATE:
            fields["codec_private"] = bytes(buf[e.start:e.end])
        elif e.id == CODEC_DELAY:
            fields["codec_delay_ns"] = ebml.read_uint(buf, e)
        elif e.id == SEEK_PRE_ROLL:
            fields["seek_pre_roll_ns"] = ebml.read_uint(buf, e)
        elif e.id == LANGUAGE:
            fields["language"] = _string(buf, e)
        elif e.id == VIDEO:
            for v in ebml.children(buf, e, limits=limits):
                if v.id == PIXEL_WIDTH:
                    fields["width"] = ebml.read_uint(buf, v)
                elif v.id == PIXEL_HEIGHT:
                    fields["height"] = ebml.read_uint(buf, v)
        elif e.id == AUDIO:
            for a in ebml.children(buf, e, limits=limits):
                if a.id == SAMPLING_FREQUENCY:
                    fields["sample_rate"] = int(ebml.read_float(buf, a))
                elif a.id == CHANNELS:
                    fields["channels"] = ebml.read_uint(buf, a)
        elif e.id == CONTENT_ENCODINGS:
            fields["encryption"] = bytes(buf[e.offset:e.end])
            for enc in ebml.children(buf, e, limits=limits):
                if enc.id != CONTENT_ENCODING:
                    continue
                crypt = ebml.find(buf, enc, CONTENT_ENCRYPTION, limits=limits)
                key_id = crypt and ebml.find(buf, crypt, CONTENT_ENC_KEY_ID, limits=limits)
                if key_id:
                    fields["kid"] = bytes(buf[key_id.start:key_id.end])
    if not kind or "codec_id" not in fields:
        raise MalformedMedia("WebM: the track entry has no TrackType or CodecID")
    return WebmTrack(kind=kind, **fields)  # type: ignore[arg-type]


def read_cluster(buf: bytes | memoryview, limits: ebml.EbmlLimits = ebml.EbmlLimits()) -> list[Block]:
    """The blocks of the Clusters in ``buf`` (a media segment, or several), in order."""
    out: list[Block] = []
    for c in ebml.iter_elements(buf, limits=limits):
        if c.id != CLUSTER:
            raise MalformedMedia(f"WebM: element 0x{c.id:X} where a Cluster was expected")
        base: int | None = None
        for e in ebml.children(buf, c, limits=limits):
            if e.id == TIMESTAMP:
                base = ebml.read_uint(buf, e)
            elif e.id == SIMPLE_BLOCK:
                if base is None:
                    raise MalformedMedia("WebM: a SimpleBlock before its Cluster's Timestamp")
                number, n_len, _ = ebml.read_vint(buf, e.start, e.end)
                head = e.start + n_len
                if head + 3 > e.end:
                    raise MalformedMedia("WebM: a SimpleBlock truncated inside its header")
                if number != _TRACK_NUMBER:
                    raise UnsupportedMedia(f"WebM: a block of track {number}")
                relative = int.from_bytes(buf[head:head + 2], "big", signed=True)
                flags = buf[head + 2]
                if flags & _LACING:
                    raise UnsupportedMedia("WebM: laced blocks")
                out.append(Block(base + relative, bool(flags & _KEYFRAME), bytes(buf[head + 3:e.end])))
    return out
