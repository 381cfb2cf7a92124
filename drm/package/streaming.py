"""Packaging a fragmented MP4 while it is being written: each segment is cut, encrypted and put
into the sink as soon as its samples are in, so when the writer (the ladder's ffmpeg) exits
only the last segments and the manifests remain.

:class:`StreamingPackager` is fed the file's bytes as they appear (:meth:`~StreamingPackager.feed`;
:class:`~headwater.drm.bmff.stream.FragmentStream` parses them, with its caps) and cuts by the
same rules as the progressive path (:mod:`.segmenter`), applied sample by sample: a video track
is cut at its first keyframe at or after the target duration, so a segment is complete when
the keyframe that starts the next one arrives; audio is cut at the first sample presenting at
or after each cut of the first video track, so an audio sample waits until the video has a
cut past it (or has ended) before it is placed. Given the same samples the segments, their
numbers and the manifests are the same as :func:`~.pipeline.package_file` makes from the
progressive MP4 of the same encode. At most one open segment per track is held (capped by
``max_segment_bytes``), plus the audio waiting on the video's next cut.

:meth:`~StreamingPackager.finish` (the input is complete) reads the end, puts the last segments
and the manifests, and commits the sink; any error aborts the sink (everything put is deleted)
and is raised, so a title is never half-published: the manifests go only at the commit, after
every segment they name. Key rotation and ``aes128`` are the progressive path's only.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from fractions import Fraction

from ..bmff.movie import Movie, Sample, Track
from ..bmff.stream import FragmentStream, MovieRead, SamplesRead, StreamLimits, is_sync
from ..errors import DrmError, UnsupportedMedia
from ..webm.encrypt import FrameEncryptor
from .encrypt import TrackProtector
from .manifests import check_hls
from .pipeline import PackageOptions, PackageResult, put_manifests
from .segmenter import SegmentInfo, container_of, init_name, init_segment_for, track_output, write_segment
from .sink import SegmentSink

__all__ = ["StreamingPackager"]


class _TrackCutter:
    """One track's open segment and what has been written of it."""

    def __init__(self, track: Track, protector: TrackProtector | None) -> None:
        self.track = track
        self.protector = protector
        self.where = f"track {track.track_id} ({track.kind})"
        self.count = 0                          # samples seen
        self.open: list[Sample] = []            # the open segment's samples
        self.open_data: list[memoryview] = []
        self.open_bytes = 0
        self.start_dts = 0
        self.waiting: deque[tuple[Sample, memoryview]] = deque()  # audio not yet placed
        self.waiting_bytes = 0
        self.next_cut = 0                       # index into the lead video's cuts
        self.segments: list[SegmentInfo] = []
        self.durations: Counter[int] = Counter()


class StreamingPackager:
    """Feed it a growing fragmented MP4 (:meth:`feed`), then :meth:`finish` (or :meth:`abort`).
    Not for use from several threads at once; ``sink`` sees every file of the run."""

    def __init__(self, sink: SegmentSink, options: PackageOptions, *,
                 protector_factory: Callable[..., TrackProtector] = TrackProtector.for_sample_entry,
                 limits: StreamLimits | None = None) -> None:
        if options.rotate_seconds is not None or options.scheme == "aes128":
            raise DrmError("key rotation and aes128 are packaged from a progressive MP4 (package_file), "
                           "not while it is written")
        self.sink = sink
        self.options = options
        self._factory = protector_factory
        self._stream = FragmentStream(limits or StreamLimits(movie_limits=options.movie_limits))
        self._seg = options.segmenter_options
        self._movie: Movie | None = None
        self._cutters: dict[int, _TrackCutter] = {}
        self._lead: _TrackCutter | None = None  # the first video track: audio follows its cuts
        self._cuts: list[int] = []              # its segments' presentation times after the first
        self._tick: Callable[[], None] | None = None
        self.segments_put = 0

    # --- the run ----------------------------------------------------------------------------

    def feed(self, data: bytes | memoryview) -> None:
        """The next bytes of the file; every segment they complete is put into the sink. On an
        error the sink is aborted and the error raised."""
        try:
            for event in self._stream.feed(data):
                if isinstance(event, MovieRead):
                    self._start(event.movie)
                else:
                    self._samples(event)
        except BaseException:
            self.abort()
            raise

    def finish(self, *, tick: Callable[[], None] | None = None) -> PackageResult:
        """The file is complete: put the last segments and the manifests and commit the sink.
        ``tick()`` is called before each file put from here on (a heartbeat; it may raise to
        stop). On an error the sink is aborted and the error raised."""
        self._tick = tick
        try:
            self._stream.close()
            for c in self._ordered():
                if not c.count:
                    raise UnsupportedMedia(f"{c.where} has no samples")
            for c in self._ordered():
                if c is not self._lead and c.track.handler == b"soun" and self._lead is not None:
                    self._place_audio(c, final=True)
                self._close_segment(c)
            tracks = tuple(
                track_output(c.track, c.segments, init_names=[init_name(c.track, self._seg)],
                             protectors=[c.protector], period_starts=[0], frame_rate=_frame_rate(c),
                             container=container_of(c.track, self._seg))
                for c in self._ordered())
            names = put_manifests(_Ticking(self.sink, tick), tracks, self.options, (self.options.kid,))
            if tick is not None:
                tick()
            self.sink.commit()
            return PackageResult(tracks, tuple(names))
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything put so far (the sink deletes it)."""
        self.sink.abort()

    # --- the movie --------------------------------------------------------------------------

    def _start(self, movie: Movie) -> None:
        tracks = [t for t in movie.tracks if t.kind in ("video", "audio")]
        if not tracks:
            raise UnsupportedMedia("no audio or video track")
        if self.options.hls:
            check_hls([(t.kind, t.codec) for t in tracks])
        self._movie = movie
        o = self.options
        unknown = o.webm_track_ids - {t.track_id for t in tracks}
        if unknown:
            raise UnsupportedMedia(f"WebM asked for tracks not in the input: {sorted(unknown)}")
        for t in sorted(tracks, key=lambda t: (t.handler != b"vide", t.track_id)):
            protector: TrackProtector | FrameEncryptor | None = None
            if o.scheme != "none" and t.track_id in o.webm_track_ids:
                protector = FrameEncryptor(o.key, o.kid)
            elif o.scheme != "none":
                protector = self._factory(t.sample_entry, scheme=o.scheme, key=o.key, kid=o.kid,
                                          extra_pssh=o.extra_pssh)
            c = self._cutters[t.track_id] = _TrackCutter(t, protector)
            if self._lead is None and t.handler == b"vide":
                self._lead = c
            self._put(init_name(t, self._seg), init_segment_for(t, protector, self._seg))  # type: ignore[arg-type]

    def _ordered(self) -> list[_TrackCutter]:
        return list(self._cutters.values())  # made video first, by track id

    # --- cutting ----------------------------------------------------------------------------

    def _samples(self, event: SamplesRead) -> None:
        c = self._cutters.get(event.track_id)
        if c is None:  # a track of another kind (text, timecode)
            return
        t = c.track
        dts = event.base_decode_time
        limit = self.options.movie_limits.max_samples
        for s, data in zip(event.samples, event.data):
            if c.count >= limit:
                raise UnsupportedMedia(f"{c.where}: over the limit of {limit} samples")
            sample = Sample(c.count, -1, s.size, dts, s.composition_offset, s.duration, is_sync(s.flags))
            c.count += 1
            dts += s.duration
            if t.handler == b"vide":
                c.durations[s.duration] += 1
            if t.handler == b"soun" and self._lead is not None:
                c.waiting.append((sample, data))
                c.waiting_bytes += s.size
                self._place_audio(c, final=False)
                if c.waiting_bytes > self._seg.max_segment_bytes:
                    # Held for the video's next cut: an input whose video stops (or lags far
                    # behind) while its audio runs on is refused, not buffered without bound.
                    raise UnsupportedMedia(f"{c.where}: over {self._seg.max_segment_bytes} bytes of audio "
                                           "past the video's last keyframe")
            else:
                self._by_own_keyframes(c, sample, data)

    def _by_own_keyframes(self, c: _TrackCutter, s: Sample, data: memoryview) -> None:
        """A video track (or audio without video): cut at the first sync sample at or after
        the target duration."""
        if s.index == 0 and not s.sync:
            raise UnsupportedMedia(f"{c.where} does not start with a keyframe")
        target = self._seg.segment_seconds
        if s.index > 0 and s.sync and \
                (s.dts - c.start_dts) * target.denominator >= target.numerator * c.track.timescale:
            self._close_segment(c)
            c.start_dts = s.dts
            if c is self._lead:
                self._cuts.append(s.dts + s.cts_offset - c.track.presentation_offset)
                for other in self._ordered():
                    if other.waiting:
                        self._place_audio(other, final=False)
        self._add(c, s, data)

    def _place_audio(self, c: _TrackCutter, *, final: bool) -> None:
        """Place the waiting audio samples whose segment is known: the first presenting at or
        after a cut of the lead video starts a new segment (several cuts passed at once make one
        cut, as in the progressive path); a sample past the last cut known waits for the next
        one, unless the video has ended (``final``)."""
        lead = self._lead
        assert lead is not None
        cut_ts, ts = lead.track.timescale, c.track.timescale
        cuts = self._cuts
        while c.waiting:
            s, data = c.waiting[0]
            if s.index > 0:
                pts = s.dts + s.cts_offset - c.track.presentation_offset
                if not final and not (cuts and cuts[-1] * ts > pts * cut_ts):
                    return  # a cut not yet known may come before this sample
                cut = False
                while c.next_cut < len(cuts) and pts * cut_ts >= cuts[c.next_cut] * ts:
                    c.next_cut += 1
                    cut = True
                if cut:
                    self._close_segment(c)
            c.waiting.popleft()
            c.waiting_bytes -= s.size
            self._add(c, s, data)

    def _add(self, c: _TrackCutter, s: Sample, data: memoryview) -> None:
        c.open.append(s)
        c.open_data.append(data)
        c.open_bytes += s.size
        if c.open_bytes > self._seg.max_segment_bytes:
            raise UnsupportedMedia(f"{c.where}: a segment would exceed {self._seg.max_segment_bytes} "
                                   "bytes (keyframes too far apart)")

    def _close_segment(self, c: _TrackCutter) -> None:
        """Write the open segment (if any) and open the next."""
        if not c.open:
            return
        if self._tick is not None:
            self._tick()
        c.segments.append(write_segment(self.sink, c.track, len(c.segments) + 1, c.open, c.open_data,
                                        c.protector, self._seg))
        self.segments_put += 1
        c.open, c.open_data, c.open_bytes = [], [], 0

    def _put(self, name: str, data: bytes) -> None:
        if self._tick is not None:
            self._tick()
        self.sink.put(name, data)


def _frame_rate(c: _TrackCutter) -> Fraction | None:
    """A video track's commonest sample duration as a rate, as the progressive path takes it
    from its ``stts``."""
    if c.track.handler != b"vide" or not c.durations:
        return None
    delta = c.durations.most_common(1)[0][0]
    return Fraction(c.track.timescale, delta) if delta else None


class _Ticking:
    """``sink`` with ``tick()`` before each put (the manifests)."""

    def __init__(self, sink: SegmentSink, tick: Callable[[], None] | None) -> None:
        self._sink = sink
        self._tick = tick

    def put(self, name: str, data: bytes) -> None:
        if self._tick is not None:
            self._tick()
        self._sink.put(name, data)

    def commit(self) -> None:
        raise AssertionError("the packager commits the sink itself")

    def abort(self) -> None:
        self._sink.abort()
