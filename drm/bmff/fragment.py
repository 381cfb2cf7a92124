"""CMAF init and media segments, written and read. Sans-IO.

Writers: :func:`init_segment` (``ftyp`` with the ``cmfc``/``iso6`` brands; ``moov`` with
``mvhd``, one ``trak`` whose ``stbl`` has empty tables and the track's sample entry, an edit
list carrying the presentation offset, ``mvex``/``trex``; protection boxes such as ``pssh`` are
appended by the caller) and :func:`media_segment` (``styp``, ``moof`` with ``mfhd`` and one
``traf`` — ``tfhd`` with default-base-is-moof, ``tfdt`` version 1, ``trun`` version 1 with a
data offset and per-sample duration, size, flags and signed composition offsets — and
``mdat``). Extra ``traf`` children (``saiz``/``saio``/``senc``) go after the ``trun``; they are
asked for with the moof-relative offset they will start at, and the ``trun``'s data offset
accounts for them.

Readers: :func:`read_init_segment` and :func:`read_fragments`, for the tests and for checking
what another packager wrote (Shaka Packager's ``tfhd`` defaults, several ``trun``\\ s, a
``sidx`` before the ``moof``); sample data is returned as file positions, checked against the
buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from headwater.drm.bmff.box import BoxHeader, ByteReader, box, find_box, full_box, iter_boxes
from headwater.drm.bmff.movie import Movie, parse_moov
from headwater.drm.errors import MalformedMedia

__all__ = [
    "SYNC_SAMPLE_FLAGS", "NON_SYNC_SAMPLE_FLAGS", "sample_flags", "InitTrack", "init_segment",
    "FragmentSample", "media_segment", "TrackDefaults", "InitSegment", "read_init_segment",
    "TrackFragment", "MovieFragment", "read_fragments", "MAX_TRUN_SAMPLES",
]

#: sample_depends_on = 2 (an I-frame, depends on nothing).
SYNC_SAMPLE_FLAGS = 0x02000000
#: sample_depends_on = 1 and sample_is_non_sync_sample.
NON_SYNC_SAMPLE_FLAGS = 0x01010000

_TFHD_BASE_DATA_OFFSET = 0x000001
_TFHD_SAMPLE_DESCRIPTION = 0x000002
_TFHD_DEFAULT_DURATION = 0x000008
_TFHD_DEFAULT_SIZE = 0x000010
_TFHD_DEFAULT_FLAGS = 0x000020
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000

_TRUN_DATA_OFFSET = 0x000001
_TRUN_FIRST_FLAGS = 0x000004
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400
_TRUN_CTO = 0x000800

#: The most samples one trun may claim (an hour of 240 fps video is ~864k).
MAX_TRUN_SAMPLES = 1 << 20

_UNITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def sample_flags(sync: bool) -> int:
    """The trun/trex sample_flags word for a sync or a non-sync sample."""
    return SYNC_SAMPLE_FLAGS if sync else NON_SYNC_SAMPLE_FLAGS


# --- init segment ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class InitTrack:
    """What an init segment says about its one track. ``presentation_offset`` (media time the
    presentation starts at) becomes an edit list when it is not 0."""

    track_id: int
    handler: bytes                  #: b"vide" or b"soun"
    timescale: int
    sample_entry: bytes             #: the whole stsd entry box (encv/enca when encrypted)
    language: str = "und"
    width: int = 0
    height: int = 0
    presentation_offset: int = 0


def _language(code: str) -> int:
    if len(code) != 3 or not all("a" <= c <= "z" for c in code):
        code = "und"
    return sum((ord(c) - 0x60) << s for c, s in zip(code, (10, 5, 0)))


def init_segment(track: InitTrack, *, moov_extra: bytes = b"") -> bytes:
    """``ftyp`` + ``moov`` for one track; ``moov_extra`` (e.g. ``pssh`` boxes) ends the moov."""
    video = track.handler == b"vide"
    ftyp = box(b"ftyp", b"cmfc", struct.pack(">I", 0), b"iso6", b"cmfc", b"mp41")
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, track.timescale, 0),
                    struct.pack(">IH10x", 0x00010000, 0x0100), _UNITY_MATRIX, bytes(24),
                    struct.pack(">I", track.track_id + 1))
    tkhd = full_box(b"tkhd", 0, 0x000003,  # enabled, in movie
                    struct.pack(">IIIII", 0, 0, track.track_id, 0, 0), bytes(8),
                    struct.pack(">hhHH", 0, 0, 0 if video else 0x0100, 0), _UNITY_MATRIX,
                    struct.pack(">II", track.width << 16, track.height << 16))
    edts = b""
    # segment_duration 0: the edit spans the whole (fragmented) media, as CMAF allows. A
    # negative offset is a delay: an empty edit (in the movie timescale, which is the track's
    # here) before the media.
    if track.presentation_offset > 0:
        edts = box(b"edts", full_box(b"elst", 0, 0, struct.pack(
            ">IIiHH", 1, 0, track.presentation_offset, 1, 0)))
    elif track.presentation_offset < 0:
        edts = box(b"edts", full_box(b"elst", 0, 0, struct.pack(
            ">IIiHHIiHH", 2, -track.presentation_offset, -1, 1, 0, 0, 0, 1, 0)))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, track.timescale, 0),
                    struct.pack(">HH", _language(track.language), 0))
    name = b"VideoHandler\x00" if video else b"SoundHandler\x00"
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), track.handler, bytes(12), name)
    media_header = (full_box(b"vmhd", 0, 1, bytes(8)) if video
                    else full_box(b"smhd", 0, 0, bytes(4)))
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1),
                                 full_box(b"url ", 0, 1)))
    stbl = box(b"stbl",
               full_box(b"stsd", 0, 0, struct.pack(">I", 1), track.sample_entry),
               full_box(b"stts", 0, 0, bytes(4)),
               full_box(b"stsc", 0, 0, bytes(4)),
               full_box(b"stsz", 0, 0, bytes(8)),
               full_box(b"stco", 0, 0, bytes(4)))
    trak = box(b"trak", tkhd, edts,
               box(b"mdia", mdhd, hdlr, box(b"minf", media_header, dinf, stbl)))
    mvex = box(b"mvex", full_box(b"trex", 0, 0, struct.pack(">IIIII", track.track_id, 1, 0, 0, 0)))
    return ftyp + box(b"moov", mvhd, trak, mvex, moov_extra)


# --- media segment -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FragmentSample:
    """One sample's trun entry."""

    duration: int
    size: int
    flags: int
    composition_offset: int = 0


def media_segment(*, sequence_number: int, track_id: int, base_decode_time: int,
                  samples: Sequence[FragmentSample], data: Sequence[bytes | memoryview],
                  traf_extra: Callable[[int], bytes] | None = None,
                  styp: bool = True) -> bytes:
    """One CMAF media segment (``styp`` + ``moof`` + ``mdat``) of one track fragment.

    ``data`` is the samples' bytes, in order (its total must equal the samples' sizes).
    ``traf_extra(at)`` returns the boxes placed after the ``trun``, given the offset from the
    start of the ``moof`` at which they will begin."""
    total = sum(len(d) for d in data)
    if total != sum(s.size for s in samples):
        raise ValueError(f"{total} bytes of sample data for samples of "
                         f"{sum(s.size for s in samples)} bytes")
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence_number))
    tfhd = full_box(b"tfhd", 0, _TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", track_id))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", base_decode_time))
    with_cto = any(s.composition_offset for s in samples)
    flags = _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS
    entry = struct.Struct(">IIIi" if with_cto else ">III")
    if with_cto:
        flags |= _TRUN_CTO
        entries = b"".join(entry.pack(s.duration, s.size, s.flags, s.composition_offset)
                           for s in samples)
    else:
        entries = b"".join(entry.pack(s.duration, s.size, s.flags) for s in samples)
    trun_size = 8 + 4 + 4 + 4 + len(entries)
    # moof header, mfhd, traf header, tfhd, tfdt, trun: where the extra boxes begin.
    at = 8 + len(mfhd) + 8 + len(tfhd) + len(tfdt) + trun_size
    extra = traf_extra(at) if traf_extra is not None else b""
    moof_size = at + len(extra)
    mdat_header = 8 if 8 + total <= 0xFFFFFFFF else 16
    trun = full_box(b"trun", 1, flags, struct.pack(">Ii", len(samples), moof_size + mdat_header),
                    entries)
    moof = box(b"moof", mfhd, box(b"traf", tfhd, tfdt, trun, extra))
    if len(moof) != moof_size:
        raise AssertionError("moof layout disagrees with its computed size")
    head = box(b"styp", b"msdh", struct.pack(">I", 0), b"msdh", b"msix", b"cmfs") if styp else b""
    if mdat_header == 8:
        mdat = struct.pack(">I4s", 8 + total, b"mdat")
    else:
        mdat = struct.pack(">I4sQ", 1, b"mdat", 16 + total)
    return b"".join([head, moof, mdat, *data])


# --- readers -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class TrackDefaults:
    """A ``trex``: the defaults a track's fragments fall back on."""

    track_id: int
    sample_description_index: int = 1
    duration: int = 0
    size: int = 0
    flags: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class InitSegment:
    """A parsed init segment: brands, the movie (tracks with empty tables), the ``trex``
    defaults by track id, and the ``pssh`` boxes' bytes."""

    major_brand: bytes
    compatible_brands: tuple[bytes, ...]
    movie: Movie
    defaults: Mapping[int, TrackDefaults]
    pssh: tuple[bytes, ...]


def trex_defaults(buf: bytes | bytearray | memoryview, mvex: BoxHeader) -> dict[int, TrackDefaults]:
    """Each track's ``trex`` defaults in the ``mvex`` box ``mvex`` of ``buf``, by track id."""
    out = {}
    for h in iter_boxes(buf, mvex.payload_start, mvex.end):
        if h.type == b"trex":
            r = ByteReader.of(buf, h)
            r.full_header()
            d = TrackDefaults(track_id=r.u32(), sample_description_index=r.u32(),
                              duration=r.u32(), size=r.u32(), flags=r.u32())
            out[d.track_id] = d
    return out


def read_init_segment(buf: bytes | memoryview) -> InitSegment:
    """Parse an init segment (``ftyp`` + ``moov`` with ``mvex``)."""
    ftyp = moov = None
    for h in iter_boxes(buf):
        if h.type == b"ftyp" and ftyp is None:
            ftyp = h
        elif h.type == b"moov" and moov is None:
            moov = h
    if ftyp is None or moov is None:
        raise MalformedMedia("init segment without ftyp and moov")
    r = ByteReader.of(buf, ftyp)
    major = r.bytes(4)
    r.skip(4)
    brands = tuple(r.bytes(4) for _ in range(r.remaining // 4))
    movie = parse_moov(bytes(buf[moov.offset:moov.end]), len(buf), allow_protected=True)
    mvex = find_box(buf, b"mvex", moov.payload_start, moov.end)
    if mvex is None:
        raise MalformedMedia("init segment's moov without mvex")
    defaults = trex_defaults(buf, mvex)
    pssh = tuple(bytes(buf[h.offset:h.end]) for h in iter_boxes(buf, moov.payload_start, moov.end)
                 if h.type == b"pssh")
    return InitSegment(major_brand=major, compatible_brands=brands, movie=movie,
                       defaults=defaults, pssh=pssh)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackFragment:
    """One ``traf``: its track, decode time, samples, where each sample's bytes are in the
    buffer it was read from (``data_ranges``: (offset, size)), and the traf's other children
    as (type, whole box bytes) — ``senc``, ``saiz``, ``saio``, ``sbgp`` and the like."""

    track_id: int
    base_decode_time: int
    sample_description_index: int
    samples: tuple[FragmentSample, ...]
    data_ranges: tuple[tuple[int, int], ...]
    other_boxes: tuple[tuple[bytes, bytes], ...]
    offset_in_moof: Mapping[bytes, int]  #: where each child type first starts, moof-relative


@dataclass(frozen=True, slots=True, kw_only=True)
class MovieFragment:
    """One ``moof`` and its track fragments; ``offset`` is where the moof starts."""

    sequence_number: int
    offset: int
    tracks: tuple[TrackFragment, ...]


def read_fragments(buf: bytes | memoryview,
                   defaults: Mapping[int, TrackDefaults] | None = None) -> Iterator[MovieFragment]:
    """The movie fragments of a media segment (or of several concatenated, or of a whole
    fragmented file), with ``defaults`` from the init segment's ``trex`` boxes."""
    defaults = defaults or {}
    for h in iter_boxes(buf):
        if h.type == b"moof":
            yield _read_moof(buf, h, defaults)


def _read_moof(buf, moof: BoxHeader, defaults: Mapping[int, TrackDefaults]) -> MovieFragment:
    mfhd = find_box(buf, b"mfhd", moof.payload_start, moof.end)
    if mfhd is None:
        raise MalformedMedia(f"moof at {moof.offset} without mfhd")
    r = ByteReader.of(buf, mfhd)
    r.full_header()
    sequence = r.u32()
    tracks = []
    data_end = moof.offset      # base of a traf with neither base flag, after the first
    first = True
    for traf in iter_boxes(buf, moof.payload_start, moof.end):
        if traf.type != b"traf":
            continue
        t = _read_traf(buf, moof, traf, defaults, None if first else data_end)
        first = False
        if t.data_ranges:
            data_end = t.data_ranges[-1][0] + t.data_ranges[-1][1]
        tracks.append(t)
    return MovieFragment(sequence_number=sequence, offset=moof.offset, tracks=tuple(tracks))


def _read_traf(buf, moof: BoxHeader, traf: BoxHeader, defaults: Mapping[int, TrackDefaults],
               implicit_base: int | None) -> TrackFragment:
    tfhd = find_box(buf, b"tfhd", traf.payload_start, traf.end)
    if tfhd is None:
        raise MalformedMedia(f"traf at {traf.offset} without tfhd")
    r = ByteReader.of(buf, tfhd)
    _, flags = r.full_header()
    track_id = r.u32()
    d = defaults.get(track_id, TrackDefaults(track_id=track_id))
    base = moof.offset if implicit_base is None else implicit_base
    if flags & _TFHD_BASE_DATA_OFFSET:
        base = r.u64()
    elif flags & _TFHD_DEFAULT_BASE_IS_MOOF:
        base = moof.offset
    description = r.u32() if flags & _TFHD_SAMPLE_DESCRIPTION else d.sample_description_index
    default_duration = r.u32() if flags & _TFHD_DEFAULT_DURATION else d.duration
    default_size = r.u32() if flags & _TFHD_DEFAULT_SIZE else d.size
    default_flags = r.u32() if flags & _TFHD_DEFAULT_FLAGS else d.flags
    decode_time = 0
    samples: list[FragmentSample] = []
    ranges: list[tuple[int, int]] = []
    others: list[tuple[bytes, bytes]] = []
    where: dict[bytes, int] = {}
    position = base
    for h in iter_boxes(buf, traf.payload_start, traf.end):
        where.setdefault(h.type, h.offset - moof.offset)
        if h.type == b"tfdt":
            r = ByteReader.of(buf, h)
            version, _ = r.full_header()
            decode_time = r.u64() if version == 1 else r.u32()
        elif h.type == b"trun":
            r = ByteReader.of(buf, h)
            version, tflags = r.full_header()
            count = r.u32()
            if tflags & _TRUN_DATA_OFFSET:
                position = base + r.i32()
            first_flags = r.u32() if tflags & _TRUN_FIRST_FLAGS else None
            entry = 4 * bin(tflags & 0xF00).count("1")
            r.count(count, entry)
            # Entries without per-sample fields cost no bytes: only the cap bounds them.
            if count > MAX_TRUN_SAMPLES:
                raise MalformedMedia(f"trun of {count} samples, over {MAX_TRUN_SAMPLES}")
            for i in range(count):
                duration = r.u32() if tflags & _TRUN_DURATION else default_duration
                size = r.u32() if tflags & _TRUN_SIZE else default_size
                sflags = r.u32() if tflags & _TRUN_FLAGS else default_flags
                if i == 0 and first_flags is not None:
                    sflags = first_flags
                cto = 0
                if tflags & _TRUN_CTO:
                    cto = r.i32() if version == 1 else r.u32()
                samples.append(FragmentSample(duration, size, sflags, cto))
                if position < 0 or position + size > len(buf):
                    raise MalformedMedia(f"trun sample at {position} ({size} bytes) outside "
                                         f"the {len(buf)}-byte segment")
                ranges.append((position, size))
                position += size
        elif h.type != b"tfhd":
            others.append((h.type, bytes(buf[h.offset:h.end])))
    return TrackFragment(track_id=track_id, base_decode_time=decode_time,
                         sample_description_index=description, samples=tuple(samples),
                         data_ranges=tuple(ranges), other_boxes=tuple(others),
                         offset_in_moof=where)
