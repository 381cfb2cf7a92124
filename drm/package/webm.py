"""The WebM renditions of a packaging run: a VP9 or Opus track of the input MP4 written as WebM
DASH segments (:mod:`headwater.drm.webm.segment`) rather than CMAF, its frames encrypted by
WebM Encryption (:mod:`headwater.drm.webm.encrypt`) under the title's key. Sans-IO.

The segmenter cuts every track the same way whatever its container (same sample ranges, same
numbers, same :class:`~.segmenter.SegmentInfo` timing on the presentation timeline), so a WebM
rendition's segments align with the CMAF ones and the MPD describes both alike; only the
bytes of the init and media segments, and the names (``init.webm``, ``seg-<n>.webm``), differ.

Timing: the MP4 track's times are in its timescale; WebM's in milliseconds, rounded. A VP9
frame's timestamp is its presentation time. Opus's is its decode time, its priming (the MP4
edit list's media time, i.e. the pre-skip) being the track's ``CodecDelay``, and its
``CodecPrivate`` is the ``OpusHead`` the ``dOps`` box holds the same fields of (big-endian in
MP4, little-endian in Ogg and Matroska).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from headwater.drm.bmff.box import ByteReader, find_box
from headwater.drm.bmff.movie import Movie, Sample, Track
from headwater.drm.errors import MalformedMedia, UnsupportedMedia
from headwater.drm.webm.encrypt import FrameEncryptor
from headwater.drm.webm.segment import Block, WebmTrack, cluster, init_segment

__all__ = ["WEBM_FORMATS", "webm_track", "webm_init_segment", "webm_media_segment", "opus_head", "webm_track_ids_of"]

#: MP4 sample entry types a WebM rendition can be made of, and their Matroska CodecIDs.
WEBM_FORMATS = {b"vp09": "V_VP9", b"Opus": "A_OPUS"}
#: Opus decoders need 80 ms of audio before a seek point to converge (RFC 7845, 4.6).
OPUS_SEEK_PRE_ROLL_NS = 80_000_000
_AUDIO_ENTRY_FIELDS = 8 + 28  # box header, then the AudioSampleEntry fields before its children


def opus_head(sample_entry: bytes | memoryview) -> bytes:
    """The ``OpusHead`` (RFC 7845, 5.1) of an MP4 ``Opus`` sample entry's ``dOps``."""
    dops = find_box(sample_entry, b"dOps", _AUDIO_ENTRY_FIELDS, len(sample_entry))
    if dops is None:
        raise MalformedMedia("Opus sample entry without its dOps")
    r = ByteReader.of(sample_entry, dops)
    version, channels, pre_skip, rate, gain, family = r.u8(), r.u8(), r.u16(), r.u32(), r.u16(), r.u8()
    if version != 0:
        raise UnsupportedMedia("dOps version other than 0")
    table = b""
    if family != 0:
        # StreamCount, CoupledCount, then one mapping byte per output channel.
        table = bytes(r.u8() for _ in range(2 + channels))
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, rate,
                                     struct.unpack(">h", gain.to_bytes(2, "big"))[0], family) + table


def webm_track_ids_of(movie: Movie) -> frozenset[int]:
    """The tracks of ``movie`` that can be WebM: its VP9 and Opus ones."""
    return frozenset(t.track_id for t in movie.tracks if t.format in WEBM_FORMATS)


def _ms(t: int, timescale: int) -> int:
    """``t`` ticks of ``timescale`` in whole milliseconds, rounded to nearest."""
    return (t * 1000 * 2 + timescale) // (2 * timescale)


def webm_track(track: Track, encryptor: FrameEncryptor | None) -> WebmTrack:
    """``track`` (VP9 or Opus) as a WebM track entry; UnsupportedMedia for any other codec."""
    codec_id = WEBM_FORMATS.get(track.format)
    if codec_id is None:
        raise UnsupportedMedia(f"track {track.track_id} ({track.codec}): WebM carries VP9 and Opus only")
    encryption = encryptor.track_encodings() if encryptor is not None else b""
    if track.kind == "video":
        return WebmTrack(kind="video", codec_id=codec_id, width=track.width, height=track.height,
                         language=track.language, encryption=encryption)
    return WebmTrack(kind="audio", codec_id=codec_id, sample_rate=track.sample_rate, channels=track.channels,
                     language=track.language, codec_private=opus_head(track.sample_entry),
                     codec_delay_ns=track.presentation_offset * 1_000_000_000 // track.timescale,
                     seek_pre_roll_ns=OPUS_SEEK_PRE_ROLL_NS, encryption=encryption)


def webm_init_segment(track: Track, encryptor: FrameEncryptor | None) -> bytes:
    """``track``'s WebM init segment."""
    return init_segment(webm_track(track, encryptor), track_uid=track.track_id)


def webm_media_segment(track: Track, batch: Sequence[Sample], data: Sequence[bytes | memoryview],
                       encryptor: FrameEncryptor | None) -> bytes:
    """The Cluster of ``batch`` (timing and sync flags) with their bytes ``data``, each frame
    encrypted by ``encryptor`` when there is one."""
    # Opus keeps its priming in CodecDelay; video frames are placed where they present.
    offset = 0 if track.format == b"Opus" else track.presentation_offset
    blocks = []
    for s, d in zip(batch, data):
        frame = encryptor.encrypt(d) if encryptor is not None else d
        blocks.append(Block(_ms(s.dts + s.cts_offset - offset, track.timescale),
                            s.sync or track.kind == "audio", frame))
    return cluster(blocks)
