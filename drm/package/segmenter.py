"""The streaming CMAF segmenter: a progressive MP4 in, per track an init segment and numbered
media segments out, each sample optionally encrypted on the way.

A run has two passes. The first reads only the ``moov`` (:func:`~headwater.drm.bmff.movie.read_movie`
validates every table and every sample's place in the file) and plans the cuts from the tables
alone: video is cut on sync samples once a segment has reached the target duration, audio at
the first sample presenting at or after each cut of the first video track (by itself at the
target duration when there is no video). Every refusal — a malformed table, a video track
without keyframes or not starting with one, a segment over the byte cap — happens in this pass,
before anything reaches the sink. The second pass writes: per track the init segment, then per
planned segment one seek and read per contiguous run of its samples (never the whole ``mdat``;
at most one segment of one track is in memory), encryption through the track's protector, and
``seg-<n>.m4s``. A failure in either pass aborts the sink, so nothing partial is published.

Key rotation by period (``period_seconds``): video is also cut at the first keyframe at or after
each multiple of the period, so a period is a whole number of segments and no segment straddles
a key change; :func:`plan_periods` says at which segment each period starts (audio at the first
of its segments presenting at or after the video's period start, as its cuts follow the
video's). Each period of a track has its own protector (its own KID and key) and its own init
segment, ``<track>/p<n>/init.mp4`` (the ``tenc`` default KID and ``pssh`` of that period's
key); segment numbers and ``tfdt`` run on across periods, so one timeline serves them all.

A track named in ``webm_track_ids`` (VP9, Opus) is cut the same way but written as WebM DASH
segments (``init.webm``, ``seg-<n>.webm``: :mod:`.webm`), its protector a WebM
``FrameEncryptor`` (:mod:`headwater.drm.webm.encrypt`).

The protector (``TrackProtector`` in ``drm/package/encrypt.py`` implements it) rewrites the
sample entry, encrypts each sample returning its auxiliary info, lays out the ``traf`` boxes
that carry that info (``saiz``/``saio``/``senc``) at a given moof-relative offset, and gives the
``pssh`` boxes for the ``moov``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO, Protocol

from headwater.drm.bmff.fragment import (
    FragmentSample, InitTrack, init_segment, media_segment, sample_flags,
)
from headwater.drm.bmff.movie import Movie, MovieLimits, Sample, Track, read_movie
from headwater.drm.errors import MalformedMedia, UnsupportedMedia
from headwater.drm.package.sink import SegmentSink
from headwater.drm.package.webm import webm_init_segment, webm_media_segment

__all__ = [
    "TrackProtector", "SegmenterOptions", "SegmentInfo", "TrackOutput", "plan_segments",
    "plan_periods", "segment_file", "segment_path", "bandwidths", "init_segment_for", "write_segment",
    "track_output", "container_of", "init_name",
]


class TrackProtector(Protocol):
    """What the segmenter asks of a track's encryption."""

    def sample_entry(self, entry_box: bytes) -> bytes:
        """The protected sample entry (``encv``/``enca`` with its ``sinf``) for ``entry_box``."""

    def encrypt(self, sample: bytes) -> tuple[bytes, Any]:
        """The encrypted sample and its auxiliary info (IV, subsamples)."""

    def traf_boxes(self, aux: list[Any], at: int) -> bytes:
        """The ``traf`` children carrying ``aux`` for one fragment's samples, to be placed at
        moof-relative offset ``at`` (after the ``trun``)."""

    def pssh_boxes(self) -> bytes:
        """``pssh`` boxes for the end of the init segment's ``moov`` (may be empty)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmenterOptions:
    """How to cut. ``segment_seconds`` is the target (segments end at the first keyframe at or
    after it); ``max_segment_bytes`` caps one segment of one track in memory, so an input whose
    keyframes are too far apart is refused rather than read whole; ``styp`` puts a segment type
    box before each ``moof``; ``period_seconds`` (None: one period) cuts the title into key
    periods, each starting at the first video keyframe at or after a multiple of it."""

    segment_seconds: Fraction = Fraction(2)
    max_segment_bytes: int = 256 * 1024 * 1024
    styp: bool = True
    movie_limits: MovieLimits = field(default_factory=MovieLimits)
    period_seconds: Fraction | None = None
    #: tracks written as WebM DASH segments (VP9, Opus) instead of CMAF: :mod:`.webm`
    webm_track_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        seconds = self.segment_seconds
        if not isinstance(seconds, Fraction):
            seconds = Fraction(str(seconds)) if isinstance(seconds, float) else Fraction(seconds)
            object.__setattr__(self, "segment_seconds", seconds)
        if seconds <= 0:
            raise ValueError(f"segment_seconds must be positive, not {seconds}")
        period = self.period_seconds
        if period is not None:
            if not isinstance(period, Fraction):
                period = Fraction(str(period)) if isinstance(period, float) else Fraction(period)
                object.__setattr__(self, "period_seconds", period)
            if period < seconds:
                raise ValueError(f"the key period ({period} s) must be at least one segment ({seconds} s)")
        if self.max_segment_bytes <= 0:
            raise ValueError("max_segment_bytes must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentInfo:
    """One media segment as written. Times are in the track's timescale: ``decode_time`` is its
    ``tfdt``, ``presentation_time`` its earliest presentation time on the presentation timeline
    (decode time plus composition offset, less the track's presentation offset)."""

    number: int
    name: str
    decode_time: int
    presentation_time: int
    duration: int
    size: int
    sample_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackOutput:
    """What the segmenter wrote for one track, for the manifest writers. Bandwidths are in bits
    per second over the segment files' sizes (``bandwidth``: the whole track's average;
    ``peak_bandwidth``: its busiest segment's)."""

    track_id: int
    kind: str                           #: "video" or "audio"
    codec: str                          #: RFC 6381, e.g. avc1.64001f, hvc1.1.6.L93.B0, mp4a.40.2
    timescale: int
    language: str
    init_name: str
    segment_template: str               #: e.g. "video-1/seg-$Number$.m4s"; numbers start at 1
    segments: tuple[SegmentInfo, ...]
    duration: int                       #: sum of the segments' durations, in timescale
    bandwidth: int
    peak_bandwidth: int
    presentation_offset: int            #: in timescale (the init segment's edit list)
    #: with key rotation, per period: the index (into ``segments``) of its first segment, its
    #: init segment and its KID; without, one period: ``(0,)``, ``(init_name,)``, ``(kid,)``
    period_starts: tuple[int, ...] = (0,)
    period_inits: tuple[str, ...] = ()
    period_kids: tuple[bytes, ...] = ()
    width: int = 0
    height: int = 0
    frame_rate: Fraction | None = None
    sample_rate: int = 0
    channels: int = 0
    protected: bool = False
    container: str = "mp4"              #: "mp4" (CMAF) or "webm"


# --- planning ----------------------------------------------------------------------------------

def _track_segment_starts(track: Track, options: SegmenterOptions,
                          cuts: Sequence[int] | None, cut_timescale: int) -> list[int]:
    """Index of the first sample of each segment of ``track``. ``cuts`` are presentation times
    (in ``cut_timescale``) to align to; None cuts on the track's own keyframes."""
    t = track.tables
    where = f"track {track.track_id} ({track.kind})"
    if t.count == 0:
        raise UnsupportedMedia(f"{where} has no samples")
    target = options.segment_seconds
    starts = [0]
    start_dts = 0
    segment_bytes = 0
    dts = 0
    next_cut = 0
    period = options.period_seconds if cuts is None else None
    next_period = 1  # the multiple of the period the next key period starts at (or after)
    columns = zip(t.durations(), t.is_sync(), t.sizes_iter(), t.cts_offsets())
    for i, (duration, sync, size, cto) in enumerate(columns):
        if i == 0 and not sync:
            raise UnsupportedMedia(f"{where} does not start with a keyframe")
        if i > 0:
            if cuts is None:
                # (dts - start) / timescale >= target, in integers.
                cut = sync and (dts - start_dts) * target.denominator >= \
                    target.numerator * track.timescale
                if sync and period is not None and \
                        dts * period.denominator >= next_period * period.numerator * track.timescale:
                    # A key period starts here: the segment ends even if short of the target.
                    cut = True
                    while dts * period.denominator >= next_period * period.numerator * track.timescale:
                        next_period += 1
            else:
                pts = dts + cto - track.presentation_offset
                cut = False
                while next_cut < len(cuts) and \
                        pts * cut_timescale >= cuts[next_cut] * track.timescale:
                    next_cut += 1
                    cut = True
            if cut:
                starts.append(i)
                start_dts = dts
                segment_bytes = 0
        segment_bytes += size
        if segment_bytes > options.max_segment_bytes:
            raise UnsupportedMedia(f"{where}: a segment would exceed {options.max_segment_bytes} "
                                   "bytes (keyframes too far apart)")
        dts += duration
    return starts


def _start_times(track: Track, starts: Sequence[int]) -> list[tuple[int, int]]:
    """(decode time, presentation time), in the track's timescale, of each segment's first sample."""
    wanted = set(starts)
    times = []
    dts = 0
    for i, (duration, cto) in enumerate(zip(track.tables.durations(), track.tables.cts_offsets())):
        if i in wanted:
            times.append((dts, dts + cto - track.presentation_offset))
        dts += duration
    return times


def _video_cut_times(track: Track, starts: Sequence[int]) -> list[int]:
    """Presentation times, in the track's timescale, of the segments after the first."""
    return [pts for _, pts in _start_times(track, starts)[1:]]


def plan_segments(movie: Movie, options: SegmenterOptions) -> dict[int, list[int]]:
    """Per track id, the index of the first sample of each segment; raises before any output
    for what cannot be packaged."""
    videos = [t for t in movie.tracks if t.handler == b"vide"]
    audios = [t for t in movie.tracks if t.handler == b"soun"]
    if not videos and not audios:
        raise UnsupportedMedia("no audio or video track")
    for t in videos:
        if t.tables.sync is not None and len(t.tables.sync) == 0:
            raise UnsupportedMedia(f"track {t.track_id} (video) has no keyframe")
    plan = {t.track_id: _track_segment_starts(t, options, None, 0) for t in videos}
    cuts: list[int] | None = None
    cut_timescale = 0
    if videos:
        cuts = _video_cut_times(videos[0], plan[videos[0].track_id])
        cut_timescale = videos[0].timescale
    for t in audios:
        plan[t.track_id] = _track_segment_starts(t, options, cuts, cut_timescale)
    return plan


def plan_periods(movie: Movie, plan: Mapping[int, Sequence[int]],
                 options: SegmenterOptions) -> dict[int, list[int]]:
    """Per track id, the index of the segment each key period starts with (``[0]`` without
    rotation). The first video track sets the periods: one starts with each of its segments
    whose decode time reaches the next multiple of ``period_seconds`` (the planner cut there);
    every other track starts its period with its first segment presenting at or after that
    segment. Raises when a track has no segment of its own in some period (a track far shorter
    than the others), since each period's key must open with an init segment of that track."""
    period = options.period_seconds
    if period is None:
        return {tid: [0] for tid in plan}
    videos = [t for t in movie.tracks if t.handler == b"vide"]
    tracks = [t for t in movie.tracks if t.track_id in plan]
    if videos:
        lead = videos[0]
        times = _start_times(lead, plan[lead.track_id])
        lead_periods = [0]
        next_period = 1
        for j, (dts, _) in enumerate(times):
            if j and dts * period.denominator >= next_period * period.numerator * lead.timescale:
                lead_periods.append(j)
                while dts * period.denominator >= next_period * period.numerator * lead.timescale:
                    next_period += 1
        # Period starts as presentation times in the lead track's timescale.
        starts = [times[j][1] for j in lead_periods]
        ref_timescale = lead.timescale
    else:
        # Audio only: periods by the first audio track's own decode times.
        lead = tracks[0]
        times = _start_times(lead, plan[lead.track_id])
        starts = [0]
        next_period = 1
        for dts, pts in times[1:]:
            if dts * period.denominator >= next_period * period.numerator * lead.timescale:
                starts.append(pts)
                while dts * period.denominator >= next_period * period.numerator * lead.timescale:
                    next_period += 1
        ref_timescale = lead.timescale
    out: dict[int, list[int]] = {}
    for t in tracks:
        seg_times = [pts for _, pts in _start_times(t, plan[t.track_id])]
        indexes = [0]
        for start in starts[1:]:
            j = next((j for j, pts in enumerate(seg_times)
                      if pts * ref_timescale >= start * t.timescale), None)
            if j is None or j <= indexes[-1]:
                raise UnsupportedMedia(f"track {t.track_id} ({t.kind}) has no segment of its own in key "
                                       f"period {len(indexes) + 1}: too short for rotation at this period")
            indexes.append(j)
        out[t.track_id] = indexes
    return out


# --- writing -----------------------------------------------------------------------------------

def _read_samples(f: BinaryIO, samples: Sequence[Sample]) -> list[memoryview]:
    """Each sample's bytes: one seek and read per run of samples contiguous in the file."""
    out: list[memoryview] = []
    i = 0
    while i < len(samples):
        j = i + 1
        while j < len(samples) and samples[j].offset == samples[j - 1].offset + samples[j - 1].size:
            j += 1
        start = samples[i].offset
        length = samples[j - 1].offset + samples[j - 1].size - start
        f.seek(start)
        buf = memoryview(f.read(length))
        if len(buf) != length:
            raise MalformedMedia(f"sample data at {start}: {len(buf)} of {length} bytes read "
                                 "(the file was truncated)")
        at = 0
        for s in samples[i:j]:
            out.append(buf[at:at + s.size])
            at += s.size
        i = j
    return out


def bandwidths(segments: Sequence[SegmentInfo], timescale: int) -> tuple[int, int]:
    """(average, peak) bits per second of a track's segment files, rounded up: the average over
    the whole track, the peak its busiest segment's (never below the average)."""
    duration = sum(s.duration for s in segments)
    total_bits = 8 * sum(s.size for s in segments)
    bandwidth = -(-total_bits * timescale // duration) if duration else 0
    peak = max((-(-8 * s.size * timescale // s.duration) for s in segments if s.duration),
               default=bandwidth)
    return bandwidth, max(peak, bandwidth)


def container_of(track: Track, options: SegmenterOptions | None) -> str:
    """``webm`` for the tracks ``options`` has written as WebM, else ``mp4``."""
    return "webm" if options is not None and track.track_id in options.webm_track_ids else "mp4"


def init_name(track: Track, options: SegmenterOptions | None, period: int | None = None) -> str:
    """``video-1/init.mp4`` (``video-1/p<n>/init.mp4`` for key period ``n``; ``init.webm`` for WebM)."""
    folder = f"{track.kind}-{track.track_id}" + (f"/p{period}" if period is not None else "")
    return f"{folder}/init.{container_of(track, options)}"


def init_segment_for(track: Track, protector: TrackProtector | None,
                     options: SegmenterOptions | None = None) -> bytes:
    """``track``'s init segment, its sample entry protected by ``protector`` when there is one
    (for a WebM track, ``protector`` is its :class:`~headwater.drm.webm.encrypt.FrameEncryptor`)."""
    if container_of(track, options) == "webm":
        return webm_init_segment(track, protector)  # type: ignore[arg-type]
    entry = track.sample_entry if protector is None else protector.sample_entry(track.sample_entry)
    return init_segment(InitTrack(track_id=track.track_id, handler=track.handler,
                                  timescale=track.timescale, sample_entry=entry,
                                  language=track.language, width=track.width,
                                  height=track.height,
                                  presentation_offset=track.presentation_offset),
                        moov_extra=b"" if protector is None else protector.pssh_boxes())


def write_segment(sink: SegmentSink, track: Track, number: int, batch: Sequence[Sample],
                  data: Sequence[bytes | memoryview], protector: TrackProtector | None,
                  options: SegmenterOptions) -> SegmentInfo:
    """Segment ``number`` of ``track`` (``<kind>-<id>/seg-<number>.m4s``, or ``.webm`` for a
    track ``options`` names as WebM): the samples ``batch`` (only their timing and sync flags
    are used) with their bytes ``data``, encrypted through ``protector`` when there is one, put
    into ``sink``."""
    if container_of(track, options) == "webm":
        segment = webm_media_segment(track, batch, data, protector)  # type: ignore[arg-type]
        name = f"{track.kind}-{track.track_id}/seg-{number}.webm"
    else:
        segment = _cmaf_segment(track, number, batch, data, protector, options)
        name = f"{track.kind}-{track.track_id}/seg-{number}.m4s"
    sink.put(name, segment)
    return SegmentInfo(
        number=number, name=name, decode_time=batch[0].dts,
        presentation_time=min(s.dts + s.cts_offset for s in batch) - track.presentation_offset,
        duration=sum(s.duration for s in batch), size=len(segment), sample_count=len(batch))


def _cmaf_segment(track: Track, number: int, batch: Sequence[Sample], data: Sequence[bytes | memoryview],
                  protector: TrackProtector | None, options: SegmenterOptions) -> bytes:
    aux: list[Any] = []
    if protector is not None:
        encrypted = []
        for d in data:
            sealed, info = protector.encrypt(bytes(d))
            encrypted.append(sealed)
            aux.append(info)
        data = encrypted
    entries = [FragmentSample(s.duration, len(d), sample_flags(s.sync), s.cts_offset)
               for s, d in zip(batch, data)]
    traf_extra = None
    if protector is not None:
        def traf_extra(at: int, aux: list[Any] = aux, protector: TrackProtector = protector) -> bytes:
            return protector.traf_boxes(aux, at)
    return media_segment(sequence_number=number, track_id=track.track_id,
                         base_decode_time=batch[0].dts, samples=entries, data=data,
                         traf_extra=traf_extra, styp=options.styp)


def _write_track(f: BinaryIO, track: Track, starts: Sequence[int], sink: SegmentSink,
                 options: SegmenterOptions, protectors: Sequence[TrackProtector | None],
                 period_starts: Sequence[int]) -> TrackOutput:
    if len(protectors) != len(period_starts):
        raise ValueError(f"track {track.track_id}: {len(protectors)} protectors for "
                         f"{len(period_starts)} key periods")
    rotating = len(period_starts) > 1
    init_names = []
    for n, protector in enumerate(protectors, 1):
        init_names.append(init_name(track, options, n if rotating else None))
        sink.put(init_names[-1], init_segment_for(track, protector, options))
    # segment index (0-based) -> the protector of the period it is in
    period_of = [0] * (len(starts))
    for p, first in enumerate(period_starts):
        for j in range(first, len(starts)):
            period_of[j] = p
    samples: Iterator[Sample] = track.samples()
    bounds = list(starts) + [track.tables.count]
    segments = []
    for number, (lo, hi) in enumerate(zip(bounds, bounds[1:]), 1):
        batch = list(itertools.islice(samples, hi - lo))
        segments.append(write_segment(sink, track, number, batch, _read_samples(f, batch),
                                      protectors[period_of[number - 1]], options))
    return track_output(track, segments, init_names=init_names, protectors=protectors,
                        period_starts=period_starts, frame_rate=track.frame_rate,
                        container=container_of(track, options))


def track_output(track: Track, segments: Sequence[SegmentInfo], *, init_names: Sequence[str],
                 protectors: Sequence[TrackProtector | None], period_starts: Sequence[int],
                 frame_rate: Fraction | None, container: str = "mp4") -> TrackOutput:
    """What was written for ``track`` (in ``container``: mp4 or webm), for the manifests."""
    folder = f"{track.kind}-{track.track_id}"
    duration = sum(s.duration for s in segments)
    bandwidth, peak = bandwidths(segments, track.timescale)
    return TrackOutput(
        track_id=track.track_id, kind=track.kind, codec=track.codec, timescale=track.timescale,
        language=track.language, init_name=init_names[0],
        segment_template=f"{folder}/seg-$Number$.{'webm' if container == 'webm' else 'm4s'}",
        segments=tuple(segments), container=container,
        duration=duration, bandwidth=bandwidth, peak_bandwidth=peak,
        presentation_offset=track.presentation_offset, width=track.width, height=track.height,
        frame_rate=frame_rate, sample_rate=track.sample_rate, channels=track.channels,
        protected=protectors[0] is not None, period_starts=tuple(period_starts),
        period_inits=tuple(init_names),
        period_kids=tuple(getattr(p, "kid", b"") for p in protectors if p is not None))


def segment_file(f: BinaryIO, sink: SegmentSink, *, options: SegmenterOptions | None = None,
                 protectors: Mapping[int, TrackProtector | Sequence[TrackProtector]] | None = None,
                 file_size: int | None = None, commit: bool = True) -> tuple[TrackOutput, ...]:
    """Segment every audio and video track of the progressive MP4 ``f`` into ``sink``.

    ``protectors`` maps track ids to their encryption (tracks without one stay clear): one
    protector, or with ``options.period_seconds`` a sequence of one per key period (as many as
    :func:`plan_periods` finds; a single protector, or none, makes one period). On any
    error the sink is aborted and the error raised; on success the sink is committed unless
    ``commit`` is False (the caller then adds its manifests and commits). Returns one
    :class:`TrackOutput` per track, video first."""
    options = options or SegmenterOptions()
    protectors = protectors or {}
    try:
        movie = read_movie(f, file_size, options.movie_limits)
        unknown = set(protectors) - {t.track_id for t in movie.tracks}
        if unknown:
            raise ValueError(f"protectors for tracks not in the input: {sorted(unknown)}")
        unknown = set(options.webm_track_ids) - {t.track_id for t in movie.tracks}
        if unknown:
            raise UnsupportedMedia(f"WebM asked for tracks not in the input: {sorted(unknown)}")
        plan = plan_segments(movie, options)
        periods = plan_periods(movie, plan, options)
        ordered = sorted(movie.tracks, key=lambda t: (t.handler != b"vide", t.track_id))
        outputs = []
        for t in ordered:
            given = protectors.get(t.track_id)
            per_period: Sequence[TrackProtector | None]
            period_starts: Sequence[int]
            if given is None or not isinstance(given, Sequence):
                # Clear, or one key for the whole title: one period.
                per_period, period_starts = [given], [0]
            else:
                per_period, period_starts = given, periods[t.track_id]
            outputs.append(_write_track(f, t, plan[t.track_id], sink, options, per_period, period_starts))
        if commit:
            sink.commit()
        return tuple(outputs)
    except BaseException:
        sink.abort()
        raise


def segment_path(path: str, sink: SegmentSink, **kwargs: Any) -> tuple[TrackOutput, ...]:
    """:func:`segment_file` on the file at ``path``."""
    with open(path, "rb") as f:
        return segment_file(f, sink, **kwargs)
