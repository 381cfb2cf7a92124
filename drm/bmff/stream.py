"""A fragmented MP4 read as it is written: bytes in, the movie and then each fragment's samples
out. Sans-IO.

ffmpeg writing ``-movflags +frag_keyframe+delay_moov+default_base_moof`` lays out ``ftyp``,
``moov`` (tracks with empty sample tables, ``mvex``/``trex`` defaults, the edit lists it knows
once the first fragment is cut), then one ``moof`` + ``mdat`` pair per fragment, then ``mfra``.
:class:`FragmentStream` is fed the file's bytes in whatever pieces they arrive (a file that
grows while it is read) and returns, per complete top-level box, what it says:
:class:`MovieRead` for the ``moov``, :class:`SamplesRead` for each ``moof`` + ``mdat`` pair
(one per track fragment, the samples' bytes as views of the pair's buffer).

Hostile input, as everywhere in the packager: a box is buffered only once its header has
been checked against a cap for its type (the ``moov`` by :class:`MovieLimits`, a ``moof`` and
an ``mdat`` by :class:`StreamLimits`), so a header claiming gigabytes costs nothing; other
top-level boxes (``free``, ``mfra``, ``sidx``, ``styp``) are skipped without being buffered;
a size-0 ("to the end") box, a second ``moov``, a ``moof`` before the ``moov`` or not followed
by its ``mdat``, a sample outside its ``mdat``, a track fragment of a track the ``moov`` does
not name, a gap in a track's decode times: :class:`MalformedMedia`. :meth:`FragmentStream.close`
says whether the input ended on a box boundary (a truncated file is an error, not a shorter
title).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headwater.drm.bmff.box import MAX_HEADER, iter_boxes, parse_header_prefix
from headwater.drm.bmff.fragment import FragmentSample, TrackDefaults, read_fragments, trex_defaults
from headwater.drm.bmff.movie import Movie, MovieLimits, parse_moov
from headwater.drm.errors import MalformedMedia, UnsupportedMedia

__all__ = ["StreamLimits", "MovieRead", "SamplesRead", "FragmentStream", "is_sync"]

#: sample_is_non_sync_sample in a trun/trex/tfhd sample_flags word.
_NON_SYNC = 0x00010000


def is_sync(flags: int) -> bool:
    """Whether a fragment sample's flags mark it a sync sample (a keyframe; every audio frame)."""
    return not flags & _NON_SYNC


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamLimits:
    """Caps on one fragment, whatever its boxes say: a ``moof`` (its sample tables) and an
    ``mdat`` (one fragment of every track: at the ladder's bitrates a 2 s fragment is a few MB)."""

    max_moof_bytes: int = 16 * 1024 * 1024
    max_mdat_bytes: int = 512 * 1024 * 1024
    movie_limits: MovieLimits = field(default_factory=MovieLimits)


@dataclass(frozen=True, slots=True, kw_only=True)
class MovieRead:
    """The ``moov`` arrived: the tracks (their tables empty) and each track's ``trex`` defaults."""

    movie: Movie
    defaults: dict[int, TrackDefaults]


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplesRead:
    """One track fragment's samples, in decode order from ``base_decode_time``; ``data[i]`` is
    sample ``i``'s bytes (a view of the fragment's buffer: copy or use before the next feed)."""

    track_id: int
    base_decode_time: int
    samples: tuple[FragmentSample, ...]
    data: tuple[memoryview, ...]


class FragmentStream:
    """Feed it a fragmented MP4's bytes in order (:meth:`feed`); it returns the events each
    completes. :meth:`close` at the end of the input."""

    def __init__(self, limits: StreamLimits | None = None) -> None:
        self.limits = limits or StreamLimits()
        self._buf = bytearray()
        self._offset = 0                 # file offset of _buf[0]
        self._skip = 0                   # bytes of a skipped box still to come
        self._moof: bytes | None = None  # a moof waiting for its mdat
        self._moof_offset = 0
        self._movie: Movie | None = None
        self._defaults: dict[int, TrackDefaults] = {}
        self._next_dts: dict[int, int] = {}
        self.bytes_read = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a box not yet complete."""
        return len(self._buf)

    @property
    def movie(self) -> Movie | None:
        """The movie once its ``moov`` has been read."""
        return self._movie

    def feed(self, data: bytes | memoryview) -> list[MovieRead | SamplesRead]:
        """The events of every top-level box ``data`` completes."""
        self.bytes_read += len(data)
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            self._offset += n
            data = memoryview(data)[n:]
        self._buf += data
        out: list[MovieRead | SamplesRead] = []
        while self._buf:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                self._offset += n
                continue
            if len(self._buf) < 8 or (len(self._buf) < MAX_HEADER and not self._header_complete()):
                break
            btype, header, size, _ = parse_header_prefix(bytes(self._buf[:MAX_HEADER]), self._offset)
            where = f"box {btype!r} at offset {self._offset}"
            if size == 0:
                raise MalformedMedia(f"{where} runs to the end of the file: not a fragment")
            if size < header:
                raise MalformedMedia(f"{where} claims {size} bytes, less than its own {header}-byte header")
            cap = self._cap(btype)
            if cap is None:
                if self._moof is not None:
                    raise MalformedMedia(f"{where} between a moof and its mdat")
                self._skip = size
                continue
            if size > cap:
                raise UnsupportedMedia(f"{where} claims {size} bytes, over the {cap}-byte limit")
            if len(self._buf) < size:
                break
            box_bytes = bytes(self._buf[:size])
            del self._buf[:size]
            at = self._offset
            self._offset += size
            out.extend(self._box(btype, box_bytes, at))
        return out

    def close(self) -> None:
        """The input has ended: raises :class:`MalformedMedia` unless it ended on a box
        boundary with its ``moov`` read and no ``moof`` waiting for its ``mdat``."""
        if self._buf or self._skip:
            raise MalformedMedia(f"the file ends inside a box at offset {self._offset} (truncated)")
        if self._movie is None:
            raise MalformedMedia("no moov box: not an MP4, or a truncated one")
        if self._moof is not None:
            raise MalformedMedia(f"the moof at offset {self._moof_offset} has no mdat (truncated)")

    # --- boxes -----------------------------------------------------------------------------

    def _header_complete(self) -> bool:
        """Whether the buffer holds the whole header (a 64-bit size or a uuid needs more than 8)."""
        size = int.from_bytes(self._buf[:4], "big")
        need = 16 if size == 1 else 8
        if self._buf[4:8] == b"uuid":
            need += 16
        return len(self._buf) >= need

    def _cap(self, btype: bytes) -> int | None:
        """The most bytes a box of ``btype`` may claim; None for one skipped unread."""
        if btype == b"moov":
            return self.limits.movie_limits.max_moov_bytes
        if btype == b"moof":
            return self.limits.max_moof_bytes
        if btype == b"mdat":
            return self.limits.max_mdat_bytes
        if btype == b"ftyp":
            return 4096
        return None

    def _box(self, btype: bytes, buf: bytes, at: int) -> list[MovieRead | SamplesRead]:
        if btype == b"ftyp":
            return []
        if btype == b"moov":
            if self._movie is not None:
                raise MalformedMedia(f"a second moov at offset {at}")
            self._movie = parse_moov(buf, len(buf), self.limits.movie_limits)
            self._defaults = _trex_defaults(buf)
            for t in self._movie.tracks:
                if t.sample_count:
                    raise UnsupportedMedia(f"track {t.track_id} has samples in the moov: a progressive "
                                           "MP4, not a fragmented one")
            return [MovieRead(movie=self._movie, defaults=dict(self._defaults))]
        if btype == b"moof":
            if self._movie is None:
                raise MalformedMedia(f"a moof at offset {at} before the moov")
            if self._moof is not None:
                raise MalformedMedia(f"the moof at offset {self._moof_offset} is not followed by its mdat")
            self._moof, self._moof_offset = buf, at
            return []
        # mdat
        if self._moof is None:
            if self._movie is None:
                raise UnsupportedMedia(f"an mdat at offset {at} before any moov or moof: a progressive MP4, "
                                       "not a fragmented one")
            raise MalformedMedia(f"an mdat at offset {at} without its moof")
        moof, self._moof = self._moof, None
        return self._fragment(moof, buf)

    def _fragment(self, moof: bytes, mdat: bytes) -> list[MovieRead | SamplesRead]:
        assert self._movie is not None
        pair = memoryview(moof + mdat)
        data_start, data_end = len(moof) + _header_size(mdat), len(pair)
        known = {t.track_id for t in self._movie.tracks}
        ignored = {track_id for track_id, _ in self._movie.ignored}
        out: list[MovieRead | SamplesRead] = []
        for fragment in read_fragments(pair, self._defaults):
            for traf in fragment.tracks:
                if traf.track_id in ignored:
                    continue
                if traf.track_id not in known:
                    raise MalformedMedia(f"a track fragment of track {traf.track_id}, which the moov does not name")
                if traf.sample_description_index != 1:
                    raise UnsupportedMedia(f"track {traf.track_id}: samples use sample description "
                                           f"{traf.sample_description_index} (only one is packaged)")
                for start, size in traf.data_ranges:
                    if start < data_start or start + size > data_end:
                        raise MalformedMedia(f"track {traf.track_id}: a sample outside its fragment's mdat")
                expected = self._next_dts.get(traf.track_id, traf.base_decode_time)
                if traf.base_decode_time != expected:
                    raise MalformedMedia(f"track {traf.track_id}: a fragment decodes from {traf.base_decode_time}, "
                                         f"the previous one ended at {expected}")
                self._next_dts[traf.track_id] = expected + sum(s.duration for s in traf.samples)
                out.append(SamplesRead(track_id=traf.track_id, base_decode_time=traf.base_decode_time,
                                       samples=traf.samples,
                                       data=tuple(pair[s:s + n] for s, n in traf.data_ranges)))
        return out


def _header_size(box: bytes) -> int:
    return 16 if int.from_bytes(box[:4], "big") == 1 else 8


def _trex_defaults(moov: bytes) -> dict[int, TrackDefaults]:
    """Each track's ``trex`` defaults (``moov``/``mvex``); a fragmented file must have them."""
    top = next(iter_boxes(moov))
    mvex = next((h for h in iter_boxes(moov, top.payload_start, top.end) if h.type == b"mvex"), None)
    if mvex is None:
        raise UnsupportedMedia("a moov without mvex: a progressive MP4, not a fragmented one")
    return trex_defaults(moov, mvex)
