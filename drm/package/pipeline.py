"""One packaging run: a progressive MP4 in; CMAF segments, encrypted with one content key, and
their DASH and HLS manifests out, through a sink.

The run streams: the segmenter reads one segment of one track at a time, each sample is
encrypted as it is read, and each segment goes to the sink as soon as it is made. The
manifests are put last and the sink is committed only once everything is in, so a failure at
any point (a malformed box deep in the file, a full disk, a store that refuses a PUT) publishes
nothing: the sink is aborted and the error raised.

``aes128`` is classic HLS whole-file encryption (``METHOD=AES-128``): the segments are made
clear and each file is encrypted whole on its way to the sink (:mod:`.aes128`), one at a time
as the others are; the playlists name the licence server's key delivery with each file's IV.
DASH has no such method, so ``aes128`` with DASH is refused.

Key rotation (``rotate_seconds``, ``cenc``/``cbcs`` only): the title is cut into key periods
(:func:`~.segmenter.plan_periods`), ``period_keys(n)`` gives period ``n``'s KID and key (the
CLI takes a new one from the key store for each), each track gets one protector per period,
and the manifests switch keys at each period: a multi-Period MPD, and a new ``#EXT-X-KEY`` and
``#EXT-X-MAP`` in each media playlist.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO

from ..bmff.movie import MovieLimits, read_movie
from ..bmff.protection import Pssh
from ..errors import DrmError
from ..webm.encrypt import FrameEncryptor
from .aes128 import Aes128SegmentSink, key_uri, padded_size
from .encrypt import TrackProtector
from .manifests import MASTER_NAME, MPD_NAME, ManifestProtection, check_hls, dash_manifest, hls_manifests
from .segmenter import SegmenterOptions, TrackOutput, bandwidths, plan_periods, plan_segments, segment_file
from .sink import SegmentSink

__all__ = ["PackageOptions", "PackageResult", "package_file", "package_path", "put_manifests", "SCHEMES"]

SCHEMES = ("none", "cenc", "cbcs", "aes128")


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageOptions:
    """What to make: ``scheme`` (``none`` for clear output; ``aes128`` for classic HLS
    whole-segment encryption, HLS only) with ``key``/``kid`` (16 bytes each), the target segment
    duration, which manifests, the licence URL to name in the MPD (for ``aes128``, required: the
    playlists' key URI is its ``keys/<KID hex>`` sibling), and other DRM systems' PSSH boxes to
    carry beside the W3C common one. ``rotate_seconds`` (cenc/cbcs only, and without a fixed
    ``key``/``kid``) starts a new key period at the first video keyframe at or after each
    multiple of it; the keys then come from ``package_file``'s ``period_keys``."""

    scheme: str = "cbcs"
    key: bytes = b""
    kid: bytes = b""
    segment_seconds: Fraction = Fraction(2)
    dash: bool = True
    hls: bool = True
    licence_url: str | None = None
    extra_pssh: tuple[Pssh, ...] = ()
    movie_limits: MovieLimits = field(default_factory=MovieLimits)
    rotate_seconds: Fraction | None = None
    #: tracks (VP9, Opus) to write as WebM DASH segments with WebM Encryption (AES-CTR under
    #: ``key``, whatever ``scheme`` the CMAF tracks have), not as CMAF
    webm_track_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise DrmError(f"scheme {self.scheme!r}: expected one of {', '.join(SCHEMES)}")
        if not (self.dash or self.hls):
            raise DrmError("nothing to write: ask for --dash, --hls or both")
        if self.rotate_seconds is not None:
            if self.scheme not in ("cenc", "cbcs"):
                raise DrmError(f"key rotation is for cenc and cbcs, not --scheme {self.scheme}")
            if self.key or self.kid:
                raise DrmError("key rotation takes a new key per period: a single --kid/--key cannot rotate")
            if self.rotate_seconds < self.segment_seconds:
                raise DrmError(f"the rotation period ({self.rotate_seconds} s) is shorter than a segment "
                               f"({self.segment_seconds} s)")
        if self.webm_track_ids and (self.rotate_seconds is not None or self.scheme == "aes128"):
            raise DrmError("WebM renditions are packaged with one key (cenc or cbcs titles): not with key "
                           "rotation or aes128")
        if self.scheme == "aes128":
            if self.dash:
                raise DrmError("--scheme aes128 is HLS's whole-segment METHOD=AES-128, which DASH does not "
                               "have: package aes128 with --hls only (cenc or cbcs for DASH)")
            if not self.licence_url:
                raise DrmError("--scheme aes128 needs the licence URL (--licence-url, or a [licence] server "
                               "in cluster.toml): the playlists name its key delivery")
            try:
                key_uri(self.licence_url, self.kid or bytes(16))
            except ValueError as e:
                raise DrmError(str(e)) from None
            if len(self.key) != 16 or len(self.kid) != 16:
                raise DrmError("--scheme aes128 needs a 16-byte KID and key")

    @property
    def segmenter_options(self) -> SegmenterOptions:
        """How the segmenter cuts for these options."""
        return SegmenterOptions(segment_seconds=self.segment_seconds, movie_limits=self.movie_limits,
                                period_seconds=self.rotate_seconds, webm_track_ids=self.webm_track_ids)


@dataclass(frozen=True, slots=True)
class PackageResult:
    """The tracks written and the names of the manifests."""

    tracks: tuple[TrackOutput, ...]
    manifests: tuple[str, ...]


def _as_padded(track: TrackOutput) -> TrackOutput:
    """``track`` with its segment sizes and bandwidths as the AES-128 files are (padded)."""
    segments = tuple(dataclasses.replace(s, size=padded_size(s.size)) for s in track.segments)
    average, peak = bandwidths(segments, track.timescale)
    return dataclasses.replace(track, segments=segments, bandwidth=average, peak_bandwidth=peak)


def package_file(f: BinaryIO, sink: SegmentSink, options: PackageOptions, *, file_size: int | None = None,
                 protector_factory: Callable[..., TrackProtector] = TrackProtector.for_sample_entry,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 period_keys: Callable[[int], tuple[bytes, bytes]] | None = None) -> PackageResult:
    """Package the MP4 ``f`` into ``sink`` and commit it; on any error abort the sink and raise.
    ``random_bytes`` makes the ``aes128`` IVs; with ``options.rotate_seconds``,
    ``period_keys(n)`` is key period ``n``'s (KID, key), ``n`` from 0 (it is called once per
    period, in order, before any output)."""
    if file_size is None:
        f.seek(0, os.SEEK_END)
        file_size = f.tell()
    try:
        if options.rotate_seconds is not None and period_keys is None:
            raise DrmError("key rotation needs a key per period (period_keys)")
        protectors: dict[int, TrackProtector | list[TrackProtector]] = {}
        kids: tuple[bytes, ...] = (options.kid,)
        media_sink: SegmentSink = sink
        cipher: Aes128SegmentSink | None = None
        movie = None
        if options.hls:
            # Refused before any segment is made (the moov only is read): a VP9-only title has
            # nothing HLS would offer.
            movie = read_movie(f, file_size, options.movie_limits)
            check_hls([(t.kind, t.codec) for t in movie.tracks if t.kind in ("video", "audio")])
        if options.scheme == "aes128":
            media_sink = cipher = Aes128SegmentSink(sink, options.key, random_bytes=random_bytes)
        elif options.scheme != "none":
            # The movie is read once here (its moov only, not the media) to build each track's
            # protector from its sample entry, and once more by the segmenter.
            movie = movie or read_movie(f, file_size, options.movie_limits)
            if options.rotate_seconds is None:
                for t in movie.tracks:
                    if t.track_id in options.webm_track_ids:
                        protectors[t.track_id] = FrameEncryptor(options.key, options.kid,  # type: ignore[assignment]
                                                                random_bytes=random_bytes)
                    elif t.kind in ("video", "audio"):
                        protectors[t.track_id] = protector_factory(t.sample_entry, scheme=options.scheme,
                                                                   key=options.key, kid=options.kid,
                                                                   extra_pssh=options.extra_pssh)
            else:
                # Plan the periods from the tables now (the segmenter plans the same again) to
                # know how many keys to take.
                assert period_keys is not None
                plan = plan_segments(movie, options.segmenter_options)
                periods = plan_periods(movie, plan, options.segmenter_options)
                count = len(next(iter(periods.values())))
                keys = [period_keys(n) for n in range(count)]
                kids = tuple(kid for kid, _ in keys)
                if len(set(kids)) != len(kids):
                    raise DrmError("key rotation needs a different KID for every period")
                for t in movie.tracks:
                    if t.kind in ("video", "audio"):
                        protectors[t.track_id] = [
                            protector_factory(t.sample_entry, scheme=options.scheme, key=key, kid=kid,
                                              extra_pssh=options.extra_pssh) for kid, key in keys]
        tracks = segment_file(f, media_sink, file_size=file_size, protectors=protectors, commit=False,
                              options=options.segmenter_options)
        if cipher is not None:
            tracks = tuple(_as_padded(t) for t in tracks)
        names = put_manifests(sink, tracks, options, kids, None if cipher is None else cipher.ivs)
        sink.commit()
        return PackageResult(tracks, tuple(names))
    except BaseException:
        sink.abort()
        raise


def put_manifests(sink: SegmentSink, tracks: tuple[TrackOutput, ...], options: PackageOptions,
                  kids: tuple[bytes, ...], ivs: Any = None) -> list[str]:
    """Put the DASH MPD and the HLS playlists ``options`` asks for, naming ``tracks`` (the
    HLS master last: the media playlists it names are in before it); their names. ``kids``:
    the KID of each key period; ``ivs``: the ``aes128`` files' IVs."""
    protection = None if options.scheme == "none" else \
        ManifestProtection(options.scheme, kids[0], options.licence_url, kids)
    names: list[str] = []
    if options.dash:
        sink.put(MPD_NAME, dash_manifest(tracks, protection))
        names.append(MPD_NAME)
    if options.hls:
        playlists = hls_manifests(tracks, protection, ivs)
        for name in sorted(playlists, key=lambda n: n == MASTER_NAME):
            sink.put(name, playlists[name])
            names.append(name)
    return names


def package_path(path: str | os.PathLike[str], sink: SegmentSink, options: PackageOptions,
                 **kwargs: Any) -> PackageResult:
    """:func:`package_file` on the file at ``path`` (``kwargs`` go to it)."""
    with open(path, "rb") as f:
        return package_file(f, sink, options, file_size=os.fstat(f.fileno()).st_size, **kwargs)
