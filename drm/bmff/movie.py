"""A progressive MP4's ``moov``: its tracks and their samples. Sans-IO, except :func:`read_movie`.

:func:`parse_moov` turns the bytes of a ``moov`` into :class:`Movie`: per track its id, handler,
timescale, duration, language, the sample entry exactly as it is in ``stsd`` (so encryption can
rewrite it), the codec details (:mod:`~headwater.drm.bmff.codecs`), the presentation offset
from its edit list, and its sample tables kept compact — run-length ``stts``/``ctts``/``stsc``
and ``array`` columns for sizes, sync samples and chunk offsets — so a 2-hour title's 200k video
samples cost a few bytes each. :meth:`Track.samples` expands the tables lazily into
:class:`Sample` values (file offset, size, decode time, composition offset, duration, sync).

The input is hostile: every count is checked against the bytes present before entries are
read (``ByteReader.count``), the tables must agree on the sample count, every sample must lie
inside the file, and sample counts, track counts and the ``moov`` size are capped
(:class:`MovieLimits`). Breaches are :class:`MalformedMedia`; a well-formed input the packager
does not handle (another codec, an already fragmented file, an encrypted track) is
:class:`UnsupportedMedia`.
"""

from __future__ import annotations

import itertools
import os
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO, NamedTuple

from headwater.drm.bmff.box import (
    BoxHeader, ByteReader, find_box, iter_boxes, parse_header, scan_top_level,
)
from headwater.drm.bmff.codecs import AUDIO_ENTRY_FIELDS, VISUAL_ENTRY_FIELDS, read_sample_entry
from headwater.drm.errors import MalformedMedia, UnsupportedMedia

__all__ = [
    "MovieLimits", "Sample", "SampleTables", "Track", "Movie", "parse_moov", "read_movie",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class MovieLimits:
    """Caps on what one input may claim, whatever its boxes say."""

    max_moov_bytes: int = 256 * 1024 * 1024
    max_tracks: int = 64
    #: 16.7 M samples: a day of 120 fps video or four days of 48 kHz AAC.
    max_samples: int = 1 << 24


class Sample(NamedTuple):
    """One sample as the tables place it. A NamedTuple rather than a dataclass: a 2-hour title
    makes ~10^5 of these one after another, and a tuple is the cheapest immutable record."""

    index: int                  #: 0-based sample number in its track
    offset: int                 #: file offset of its first byte
    size: int
    dts: int                    #: decode time, in the track's timescale
    cts_offset: int             #: composition minus decode time (may be negative)
    duration: int
    sync: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleTables:
    """A track's sample tables, compact: ``stts``/``ctts``/``stsc`` as runs, the rest as arrays.
    ``sizes`` is empty when every sample has ``constant_size``; ``sync`` is None when every
    sample is a sync sample (no ``stss``)."""

    count: int
    stts_counts: array
    stts_deltas: array
    ctts_counts: array
    ctts_offsets: array
    stsc_first_chunks: array
    stsc_samples_per_chunk: array
    chunk_offsets: array
    constant_size: int
    sizes: array
    sync: array | None

    def durations(self) -> Iterator[int]:
        """Each sample's duration, in order."""
        return _expand(self.stts_counts, self.stts_deltas)

    def cts_offsets(self) -> Iterator[int]:
        """Each sample's composition offset, in order (0s without a ``ctts``)."""
        if not self.ctts_counts:
            return itertools.repeat(0, self.count)
        return _expand(self.ctts_counts, self.ctts_offsets)

    def sizes_iter(self) -> Iterator[int]:
        """Each sample's size, in order."""
        return iter(self.sizes) if self.sizes else itertools.repeat(self.constant_size, self.count)

    def samples_per_chunk(self) -> Iterator[int]:
        """Each chunk's sample count, in chunk order."""
        n_chunks = len(self.chunk_offsets)
        firsts = self.stsc_first_chunks
        for k, spc in enumerate(self.stsc_samples_per_chunk):
            last = firsts[k + 1] if k + 1 < len(firsts) else n_chunks + 1
            yield from itertools.repeat(spc, last - firsts[k])

    def is_sync(self) -> Iterator[bool]:
        """Each sample's sync flag, in order."""
        if self.sync is None:
            return itertools.repeat(True, self.count)
        return _sync_flags(self.sync, self.count)


def _expand(counts: array, values: array) -> Iterator[int]:
    return itertools.chain.from_iterable(map(itertools.repeat, values, counts))


def _sync_flags(sync: array, count: int) -> Iterator[bool]:
    at = 0
    for number in sync:            # 1-based, strictly increasing (checked when parsed)
        yield from itertools.repeat(False, number - 1 - at)
        yield True
        at = number
    yield from itertools.repeat(False, count - at)


@dataclass(frozen=True, slots=True, kw_only=True)
class Track:
    """One audio or video track of a progressive MP4."""

    track_id: int
    handler: bytes                  #: b"vide" or b"soun"
    timescale: int                  #: media timescale (mdhd)
    duration: int                   #: media duration in ``timescale`` (mdhd)
    language: str                   #: ISO 639-2/T, "und" when unset
    sample_entry: bytes = field(repr=False)  #: the stsd entry box, header included, as is
    format: bytes                   #: the entry's type: avc1, avc3, hvc1, hev1, mp4a
    codec: str                      #: RFC 6381 codecs string
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    #: Media time that the presentation starts at (the edit list's media_time minus any leading
    #: empty edit), in ``timescale``: a sample's presentation time is
    #: ``dts + cts_offset - presentation_offset``.
    presentation_offset: int = 0
    tables: SampleTables = field(repr=False)

    @property
    def kind(self) -> str:
        """``"video"`` or ``"audio"``."""
        return "video" if self.handler == b"vide" else "audio"

    @property
    def sample_count(self) -> int:
        return self.tables.count

    @property
    def frame_rate(self) -> Fraction | None:
        """The commonest sample duration as a rate (video only): ``Fraction(25)`` or
        ``Fraction(30000, 1001)``."""
        if self.handler != b"vide" or not self.tables.stts_counts:
            return None
        best = max(range(len(self.tables.stts_counts)), key=self.tables.stts_counts.__getitem__)
        delta = self.tables.stts_deltas[best]
        return Fraction(self.timescale, delta) if delta else None

    def samples(self) -> Iterator[Sample]:
        """Every sample in decode order, built lazily from the tables (column iterators zipped
        in C; only the chunk walk is Python)."""
        t = self.tables
        return map(Sample, range(t.count), _sample_offsets(t), t.sizes_iter(),
                   itertools.accumulate(t.durations(), initial=0), t.cts_offsets(),
                   t.durations(), t.is_sync())


def _sample_offsets(t: SampleTables) -> Iterator[int]:
    sizes = t.sizes_iter()
    for chunk_offset, spc in zip(t.chunk_offsets, t.samples_per_chunk()):
        if spc:
            chunk = list(itertools.islice(sizes, spc - 1))
            next(sizes)
            yield from itertools.accumulate(chunk, initial=chunk_offset)


@dataclass(frozen=True, slots=True, kw_only=True)
class Movie:
    """A progressive MP4's movie header and its audio and video tracks. ``ignored`` lists the
    (track id, handler) of tracks of other kinds (text, timecode, hint), which are not
    packaged."""

    timescale: int
    duration: int
    file_size: int
    tracks: tuple[Track, ...]
    ignored: tuple[tuple[int, bytes], ...] = ()


def read_movie(f: BinaryIO, file_size: int | None = None,
               limits: MovieLimits = MovieLimits()) -> Movie:
    """Find and parse the ``moov`` of the file ``f`` (reading only top-level headers and the
    ``moov`` itself, never the ``mdat``). ``file_size`` defaults to the file's size."""
    if file_size is None:
        file_size = os.fstat(f.fileno()).st_size
    moov: BoxHeader | None = None
    for h in scan_top_level(f, file_size):
        if h.type == b"moov":
            if moov is not None:
                raise MalformedMedia("two moov boxes")
            moov = h
        elif h.type == b"moof":
            raise UnsupportedMedia("the input is already fragmented (moof): give a progressive MP4")
    if moov is None:
        raise MalformedMedia("no moov box: not an MP4, or a truncated one")
    if moov.size > limits.max_moov_bytes:
        raise UnsupportedMedia(f"moov of {moov.size} bytes, over the {limits.max_moov_bytes} "
                               "byte limit")
    f.seek(moov.offset)
    buf = f.read(moov.size)
    if len(buf) != moov.size:
        raise MalformedMedia(f"moov truncated: {len(buf)} of {moov.size} bytes read")
    return parse_moov(buf, file_size, limits)


def parse_moov(buf: bytes | memoryview, file_size: int,
               limits: MovieLimits = MovieLimits(), *, allow_protected: bool = False) -> Movie:
    """Parse a ``moov`` box (``buf`` holds exactly the box) of a file of ``file_size`` bytes
    (every sample must lie inside it). An ``encv``/``enca`` sample entry is refused unless
    ``allow_protected`` (reading an encrypted init segment): then the codec details are those of
    the original format its ``sinf``/``frma`` names, and ``Track.format`` is that format."""
    if len(buf) > limits.max_moov_bytes:
        raise UnsupportedMedia(f"moov of {len(buf)} bytes, over the {limits.max_moov_bytes} "
                               "byte limit")
    top = next(iter_boxes(buf, 0, len(buf)), None)
    if top is None or top.type != b"moov" or top.end != len(buf):
        raise MalformedMedia("not a moov box")
    mvhd = find_box(buf, b"mvhd", top.payload_start, top.end)
    if mvhd is None:
        raise MalformedMedia("moov without mvhd")
    r = ByteReader.of(buf, mvhd)
    version, _ = r.full_header()
    if version == 1:
        r.skip(16)
        timescale, duration = r.u32(), r.u64()
    else:
        r.skip(8)
        timescale, duration = r.u32(), r.u32()
    if timescale == 0:
        raise MalformedMedia("mvhd timescale 0")
    tracks: list[Track] = []
    ignored: list[tuple[int, bytes]] = []
    traks = [h for h in iter_boxes(buf, top.payload_start, top.end) if h.type == b"trak"]
    if len(traks) > limits.max_tracks:
        raise UnsupportedMedia(f"{len(traks)} tracks, over the limit of {limits.max_tracks}")
    for trak in traks:
        t = _parse_trak(buf, trak, timescale, file_size, limits, allow_protected)
        if isinstance(t, Track):
            tracks.append(t)
        else:
            ignored.append(t)
    ids = [t.track_id for t in tracks] + [i for i, _ in ignored]
    if len(set(ids)) != len(ids):
        raise MalformedMedia("two tracks with one track_ID")
    return Movie(timescale=timescale, duration=duration, file_size=file_size,
                 tracks=tuple(tracks), ignored=tuple(ignored))


def _child(buf, parent: BoxHeader, btype: bytes, required: bool = True) -> BoxHeader | None:
    h = find_box(buf, btype, parent.payload_start, parent.end)
    if h is None and required:
        raise MalformedMedia(f"{parent.name} without its {btype.decode()}")
    return h


def _parse_trak(buf, trak: BoxHeader, movie_timescale: int, file_size: int,
                limits: MovieLimits, allow_protected: bool) -> Track | tuple[int, bytes]:
    tkhd = _child(buf, trak, b"tkhd")
    r = ByteReader.of(buf, tkhd)
    version, _ = r.full_header()
    r.skip(16 if version == 1 else 8)
    track_id = r.u32()
    if track_id == 0:
        raise MalformedMedia("tkhd track_ID 0")
    mdia = _child(buf, trak, b"mdia")
    hdlr = _child(buf, mdia, b"hdlr")
    r = ByteReader.of(buf, hdlr)
    r.full_header()
    r.skip(4)
    handler = r.bytes(4)
    if handler not in (b"vide", b"soun"):
        return track_id, handler
    mdhd = _child(buf, mdia, b"mdhd")
    r = ByteReader.of(buf, mdhd)
    version, _ = r.full_header()
    if version == 1:
        r.skip(16)
        timescale, duration = r.u32(), r.u64()
    else:
        r.skip(8)
        timescale, duration = r.u32(), r.u32()
    if timescale == 0:
        raise MalformedMedia(f"track {track_id}: mdhd timescale 0")
    packed = r.u16()
    language = "".join(chr(0x60 + ((packed >> s) & 0x1F)) for s in (10, 5, 0))
    if packed == 0 or not language.isalpha():
        language = "und"
    minf = _child(buf, mdia, b"minf")
    stbl = _child(buf, minf, b"stbl")
    entry = _sample_entry(buf, _child(buf, stbl, b"stsd"), track_id)
    info = read_sample_entry(_clear_view(entry, track_id, allow_protected), handler)
    tables = _parse_tables(buf, stbl, track_id, file_size, limits)
    edts = _child(buf, trak, b"edts", required=False)
    offset = 0
    if edts is not None:
        elst = _child(buf, edts, b"elst", required=False)
        if elst is not None:
            offset = _presentation_offset(buf, elst, movie_timescale, timescale)
    return Track(track_id=track_id, handler=handler, timescale=timescale, duration=duration,
                 language=language, sample_entry=entry, format=info.format, codec=info.codec,
                 width=info.width, height=info.height, sample_rate=info.sample_rate,
                 channels=info.channels, presentation_offset=offset, tables=tables)


def _sample_entry(buf, stsd: BoxHeader, track_id: int) -> bytes:
    r = ByteReader.of(buf, stsd)
    r.full_header()
    count = r.u32()
    if count == 0:
        raise MalformedMedia(f"track {track_id}: stsd without entries")
    entry = next(iter_boxes(buf, r.pos, stsd.end))
    return bytes(buf[entry.offset:entry.end])


def _clear_view(entry: bytes, track_id: int, allow_protected: bool) -> bytes:
    """``entry`` itself, or for a protected entry a copy typed as its original format."""
    if entry[4:8] not in (b"encv", b"enca"):
        return entry
    if not allow_protected:
        raise UnsupportedMedia(f"track {track_id} is already encrypted "
                               f"({entry[4:8].decode('latin-1')})")
    fields = VISUAL_ENTRY_FIELDS if entry[4:8] == b"encv" else AUDIO_ENTRY_FIELDS
    h = parse_header(entry, 0)
    frma = None
    for child in iter_boxes(entry, h.payload_start + fields, h.end):
        if child.type == b"sinf":
            frma = find_box(entry, b"frma", child.payload_start, child.end)
    if frma is None or frma.payload_size < 4:
        raise MalformedMedia(f"track {track_id}: protected sample entry without sinf/frma")
    original = entry[frma.payload_start:frma.payload_start + 4]
    return entry[:h.offset + 4] + original + entry[h.offset + 8:]


def _presentation_offset(buf, elst: BoxHeader, movie_timescale: int, timescale: int) -> int:
    """The media time the presentation starts at: the first non-empty edit's media_time, less
    any leading empty edits (a delay, in the movie timescale). Later edits are not honoured —
    CMAF carries one offset, not an edit decision list."""
    r = ByteReader.of(buf, elst)
    version, _ = r.full_header()
    n = r.count(r.u32(), 20 if version == 1 else 12)
    delay = 0
    for _ in range(n):
        if version == 1:
            duration, media_time = r.u64(), r.u64()
            media_time = media_time - (1 << 64) if media_time >= 1 << 63 else media_time
        else:
            duration, media_time = r.u32(), r.i32()
        r.skip(4)
        if media_time == -1:
            delay += duration
            continue
        if media_time < 0:
            raise MalformedMedia(f"elst media_time {media_time}")
        return media_time - delay * timescale // movie_timescale
    return -(delay * timescale // movie_timescale)


def _column(r: ByteReader, n: int, code: str) -> array:
    """``n`` big-endian 32-bit (``I``/``i``) or 64-bit (``Q``) entries, read in one slice; the
    count is checked against the bytes there first."""
    col = array(code)
    r.count(n, col.itemsize)
    col.frombytes(r.bytes(n * col.itemsize))
    if sys.byteorder == "little":
        col.byteswap()
    return col


def _runs(buf, h: BoxHeader, signed: bool = False) -> tuple[array, array, int]:
    """(counts, values, total) of an stts/ctts-shaped table."""
    r = ByteReader.of(buf, h)
    r.full_header()
    n = r.count(r.u32(), 8)
    pairs = _column(r, 2 * n, "i" if signed else "I")
    counts = array("I", pairs[0::2].tobytes()) if signed else pairs[0::2]
    values = array("q", pairs[1::2])
    return counts, values, sum(counts)


def _parse_tables(buf, stbl: BoxHeader, track_id: int, file_size: int,
                  limits: MovieLimits) -> SampleTables:
    where = f"track {track_id}"
    # Sizes: stsz, or the compact stz2.
    stsz = _child(buf, stbl, b"stsz", required=False)
    sizes = array("I")
    constant = 0
    if stsz is not None:
        r = ByteReader.of(buf, stsz)
        r.full_header()
        constant, count = r.u32(), r.u32()
        if count > limits.max_samples:
            raise UnsupportedMedia(f"{where}: {count} samples, over the limit of "
                                   f"{limits.max_samples}")
        if constant == 0:
            sizes = _column(r, count, "I")
    else:
        stz2 = _child(buf, stbl, b"stz2", required=False)
        if stz2 is None:
            raise MalformedMedia(f"{where}: stbl without stsz or stz2")
        r = ByteReader.of(buf, stz2)
        r.full_header()
        r.skip(3)
        field_size, count = r.u8(), r.u32()
        if field_size not in (4, 8, 16):
            raise MalformedMedia(f"{where}: stz2 field size {field_size}")
        if count > limits.max_samples:
            raise UnsupportedMedia(f"{where}: {count} samples, over the limit of "
                                   f"{limits.max_samples}")
        raw = r.bytes((count * field_size + 7) // 8)
        if field_size == 4:
            sizes.extend(x for b in raw for x in (b >> 4, b & 0xF))
            del sizes[count:]
        elif field_size == 8:
            sizes.extend(raw)
        else:
            sizes.extend(int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2))
    # Times.
    stts = _child(buf, stbl, b"stts")
    stts_counts, stts_deltas, stts_total = _runs(buf, stts)
    if stts_total != count:
        raise MalformedMedia(f"{where}: stts covers {stts_total} samples, stsz {count}")
    ctts = _child(buf, stbl, b"ctts", required=False)
    ctts_counts, ctts_offsets = array("I"), array("q")
    if ctts is not None:
        # Version 0 is unsigned by the letter of the standard, yet writers put negative
        # offsets in it; reading both versions as signed is what players do.
        ctts_counts, ctts_offsets, ctts_total = _runs(buf, ctts, signed=True)
        if ctts_total != count:
            raise MalformedMedia(f"{where}: ctts covers {ctts_total} samples, stsz {count}")
    # Sync samples.
    sync: array | None = None
    stss = _child(buf, stbl, b"stss", required=False)
    if stss is not None:
        r = ByteReader.of(buf, stss)
        r.full_header()
        sync = _column(r, r.u32(), "I")
        if (sync and (sync[0] == 0 or sync[-1] > count)) or \
                any(a >= b for a, b in zip(sync, itertools.islice(sync, 1, None))):
            raise MalformedMedia(f"{where}: stss entries out of order or past the {count} "
                                 "samples")
    # Chunks.
    stco = _child(buf, stbl, b"stco", required=False)
    offsets = array("Q")
    if stco is not None:
        r = ByteReader.of(buf, stco)
        r.full_header()
        offsets = array("Q", _column(r, r.u32(), "I"))
    else:
        co64 = _child(buf, stbl, b"co64", required=False)
        if co64 is None:
            raise MalformedMedia(f"{where}: stbl without stco or co64")
        r = ByteReader.of(buf, co64)
        r.full_header()
        offsets = _column(r, r.u32(), "Q")
    stsc = _child(buf, stbl, b"stsc")
    r = ByteReader.of(buf, stsc)
    r.full_header()
    n = r.count(r.u32(), 12)
    firsts, per_chunk = array("I"), array("I")
    for _ in range(n):
        first, spc, description = r.u32(), r.u32(), r.u32()
        if description != 1:
            raise UnsupportedMedia(f"{where}: samples use sample description {description} "
                                   "(only one is packaged)")
        if first <= (firsts[-1] if firsts else 0) or first > len(offsets):
            raise MalformedMedia(f"{where}: stsc first_chunk {first} out of order or past "
                                 f"the {len(offsets)} chunks")
        firsts.append(first)
        per_chunk.append(spc)
    if firsts and firsts[0] != 1:
        raise MalformedMedia(f"{where}: stsc does not start at chunk 1")
    tables = SampleTables(
        count=count, stts_counts=stts_counts, stts_deltas=stts_deltas,
        ctts_counts=ctts_counts, ctts_offsets=ctts_offsets, stsc_first_chunks=firsts,
        stsc_samples_per_chunk=per_chunk, chunk_offsets=offsets, constant_size=constant,
        sizes=sizes, sync=sync)
    _check_chunks(tables, where, file_size)
    return tables


def _check_chunks(t: SampleTables, where: str, file_size: int) -> None:
    """The chunks hold exactly the samples stsz counts, and each lies inside the file."""
    total = 0
    for k in range(len(t.stsc_first_chunks)):
        last = (t.stsc_first_chunks[k + 1] if k + 1 < len(t.stsc_first_chunks)
                else len(t.chunk_offsets) + 1)
        total += (last - t.stsc_first_chunks[k]) * t.stsc_samples_per_chunk[k]
    if total != t.count or (t.count and not t.stsc_first_chunks):
        raise MalformedMedia(f"{where}: the chunks hold {total} samples, stsz {t.count}")
    sizes = t.sizes_iter()
    for number, (offset, spc) in enumerate(zip(t.chunk_offsets, t.samples_per_chunk()), 1):
        if t.sizes:
            length = sum(itertools.islice(sizes, spc))
        else:
            length = spc * t.constant_size
        if offset + length > file_size:
            raise MalformedMedia(f"{where}: chunk {number} at offset {offset} ({length} bytes) "
                                 f"runs past the end of the {file_size}-byte file")
