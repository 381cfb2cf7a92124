"""What the segmenter wrote, as DASH and HLS manifests: the mapping from
:class:`~headwater.drm.package.segmenter.TrackOutput` onto the writers' own records. Sans-IO.

Names of the packaged title's files, relative to its root (the folder or ``s3://`` prefix):

- ``manifest.mpd`` — the DASH MPD;
- ``master.m3u8`` — the HLS master playlist, and ``video-<id>.m3u8`` / ``audio-<id>.m3u8``
  beside it (media playlists at the root, so their segment URIs are the same relative paths
  the MPD's templates use: ``video-1/seg-3.m4s``).

Which codecs go where: the MPD names every track (one adaptation set per codec, see
:mod:`.dash`); HLS only the H.264, HEVC and AAC ones (:data:`HLS_CODECS`). VP9 and Opus in
fMP4 are allowed by the HLS spec (RFC 8216bis) but Apple's players do not play them in HLS
and hls.js only where the browser's MSE does, while every browser that decodes VP9 plays the
DASH MPD; so a title's HLS master offers the H.264/AAC renditions, its MPD all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from ..errors import UnsupportedMedia
from . import dash, hls
from .aes128 import key_uri
from .segmenter import TrackOutput

__all__ = ["ManifestProtection", "MPD_NAME", "MASTER_NAME", "HLS_CODECS", "dash_manifest", "hls_manifests",
           "media_playlist_name", "in_hls", "check_hls"]

MPD_NAME = "manifest.mpd"
MASTER_NAME = "master.m3u8"
AUDIO_GROUP = "audio"
#: Codec families (:func:`.dash.codec_family`) an HLS master offers; other tracks are DASH only.
HLS_CODECS = frozenset({"avc", "hevc", "mp4a"})


def in_hls(track: TrackOutput) -> bool:
    """Whether ``track`` is named by the HLS playlists (H.264, HEVC, AAC) or by the MPD only."""
    return dash.codec_family(track.codec) in HLS_CODECS


def check_hls(tracks: Sequence[tuple[str, str]]) -> None:
    """Refuse HLS for ``tracks`` ((kind, RFC 6381 codec) pairs) when it would offer nothing to
    play: no H.264/HEVC/AAC track at all, or video but none of it H.264 or HEVC."""
    playable = [kind for kind, codec in tracks if dash.codec_family(codec) in HLS_CODECS]
    if not playable or ("video" in (k for k, _ in tracks) and "video" not in playable):
        raise UnsupportedMedia("HLS carries H.264, HEVC and AAC only: package VP9 or Opus for DASH "
                               "alone (--dash), or beside an H.264 rendition")


@dataclass(frozen=True, slots=True)
class ManifestProtection:
    """How the title is protected: the scheme, the KID every track is encrypted with (the
    first period's, with key rotation: each track's ``period_kids`` say which KID each period
    has, and ``kids`` lists them all), and the licence server's URL (written into the MPD as
    ``dashif:Laurl`` when given; for ``aes128``, the base of the key-delivery URL the playlists
    name, and required)."""

    scheme: str
    kid: bytes
    licence_url: str | None = None
    kids: tuple[bytes, ...] = ()


def _durations(track: TrackOutput) -> tuple[int, ...]:
    return tuple(s.duration for s in track.segments)


def _period_bounds(track: TrackOutput) -> list[tuple[int, int]]:
    """(first, end) segment indexes of each key period of ``track``."""
    starts = list(track.period_starts)
    return list(zip(starts, starts[1:] + [len(track.segments)]))


def _rotated_mpd(tracks: Sequence[TrackOutput], protection: ManifestProtection) -> bytes:
    """One Period per key: the lead (first) track's period starts, in milliseconds, are the
    Periods' starts; every track's ``presentationTimeOffset`` is that start in its timescale."""
    lead = tracks[0]
    counts = {len(t.period_starts) for t in tracks}
    if len(counts) != 1:
        raise ValueError(f"tracks have different numbers of key periods: {sorted(counts)}")
    starts = [Fraction(round(Fraction(lead.segments[first].decode_time * 1000, lead.timescale)), 1000)
              for first, _ in _period_bounds(lead)]
    periods = []
    for n, start in enumerate(starts):
        reps = []
        for t in tracks:
            first, end = _period_bounds(t)[n]
            segs = t.segments[first:end]
            prot = dash.Protection(scheme=protection.scheme, default_kid=t.period_kids[n],  # type: ignore[arg-type]
                                   licence_url=protection.licence_url)
            common = dict(id=f"{t.kind}-{t.track_id}", kind=t.kind, codecs=t.codec,
                          bandwidth=max(1, t.peak_bandwidth), timescale=t.timescale,
                          init=t.period_inits[n], media=t.segment_template,
                          segment_durations=tuple(s.duration for s in segs), start_number=segs[0].number,
                          protection=prot, first_time=segs[0].decode_time,
                          presentation_time_offset=round(start * t.timescale))
            if t.kind == "video":
                reps.append(dash.Representation(**common, width=t.width, height=t.height,  # type: ignore[arg-type]
                                                 frame_rate=t.frame_rate))
            else:
                reps.append(dash.Representation(**common, sampling_rate=t.sample_rate,  # type: ignore[arg-type]
                                                 channels=t.channels, language=t.language or None))
        periods.append(dash.Period(start=start, representations=tuple(reps)))
    return dash.write_periods(periods)


def dash_manifest(tracks: Sequence[TrackOutput], protection: ManifestProtection | None) -> bytes:
    """The MPD's bytes for ``tracks`` (video first, as the segmenter returns them); one Period
    per key when the tracks were cut into key periods."""
    if protection is not None and protection.scheme != "aes128" and \
            any(len(t.period_starts) > 1 for t in tracks):
        return _rotated_mpd(tracks, protection)
    prot = None
    if protection is not None and protection.scheme == "aes128":
        raise ValueError("DASH has no whole-segment AES-128: aes128 output is HLS only")
    if protection is not None:
        prot = dash.Protection(scheme=protection.scheme, default_kid=protection.kid,  # type: ignore[arg-type]
                               licence_url=protection.licence_url)
    # WebM Encryption is AES-CTR whatever the CMAF tracks' scheme: its sets say cenc.
    webm_prot = None if prot is None else dash.Protection(scheme="cenc", default_kid=prot.default_kid,
                                                          licence_url=prot.licence_url)
    reps = []
    for t in tracks:
        common = dict(id=f"{t.kind}-{t.track_id}", kind=t.kind, codecs=t.codec, bandwidth=max(1, t.peak_bandwidth),
                      timescale=t.timescale, init=t.init_name, media=t.segment_template,
                      segment_durations=_durations(t), start_number=t.segments[0].number,
                      protection=webm_prot if t.container == "webm" else prot, container=t.container)
        if t.kind == "video":
            reps.append(dash.Representation(**common, width=t.width, height=t.height,  # type: ignore[arg-type]
                                             frame_rate=t.frame_rate))
        else:
            reps.append(dash.Representation(**common, sampling_rate=t.sample_rate,  # type: ignore[arg-type]
                                             channels=t.channels, language=t.language or None))
    return dash.write_mpd(reps)


def media_playlist_name(track: TrackOutput) -> str:
    """``video-1.m3u8``: one media playlist per track, at the title's root."""
    return f"{track.kind}-{track.track_id}.m3u8"


def hls_manifests(tracks: Sequence[TrackOutput], protection: ManifestProtection | None,
                  ivs: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """The master playlist and one media playlist per H.264, HEVC or AAC track (the others are
    left out: module docstring), by file name. For ``aes128``,
    ``ivs`` gives each file's IV by name (init segments and media segments): a key tag with
    the init segment's IV applies to the ``EXT-X-MAP``, and one before each segment carries
    its own."""
    aes128 = protection is not None and protection.scheme == "aes128"
    key = None
    if protection is not None and not aes128:
        key = hls.clearkey_key(protection.scheme, protection.kid)  # type: ignore[arg-type]
    uri = ""
    if aes128:
        assert protection is not None
        if not protection.licence_url:
            raise ValueError("aes128 playlists need the licence URL: the key is delivered beside it")
        if ivs is None:
            raise ValueError("aes128 playlists need every file's IV")
        uri = key_uri(protection.licence_url, protection.kid)
    check_hls([(t.kind, t.codec) for t in tracks])
    tracks = [t for t in tracks if in_hls(t)]
    out: dict[str, bytes] = {}
    for t in tracks:
        segment_keys: tuple[hls.Key, ...] = ()
        segment_maps: tuple[str, ...] = ()
        track_key = key
        if key is not None and len(t.period_starts) > 1:
            # Key rotation: each segment names its period's key and init segment.
            period_keys = [hls.clearkey_key(protection.scheme, kid)  # type: ignore[union-attr,arg-type]
                           for kid in t.period_kids]
            period_of = [0] * len(t.segments)
            for n, (first, end) in enumerate(_period_bounds(t)):
                period_of[first:end] = [n] * (end - first)
            track_key = period_keys[0]
            segment_keys = tuple(period_keys[p] for p in period_of)
            segment_maps = tuple(t.period_inits[p] for p in period_of)
        if aes128:
            assert ivs is not None
            track_key = hls.aes128_key(uri, iv=ivs[t.init_name])
            segment_keys = tuple(hls.aes128_key(uri, iv=ivs[s.name]) for s in t.segments)
        playlist = hls.MediaPlaylist.numbered(init_uri=t.init_name, template=t.segment_template,
                                              start_number=t.segments[0].number,
                                              segment_durations=_durations(t), timescale=t.timescale,
                                              key=track_key, segment_keys=segment_keys,
                                              segment_maps=segment_maps)
        out[media_playlist_name(t)] = hls.write_media_playlist(playlist).encode()
    audio = [t for t in tracks if t.kind == "audio"]
    video = [t for t in tracks if t.kind == "video"]
    renditions = tuple(hls.AudioRendition(group_id=AUDIO_GROUP, name=t.language or f"audio {t.track_id}",
                                          uri=media_playlist_name(t), channels=max(1, t.channels),
                                          language=t.language or None, default=i == 0)
                       for i, t in enumerate(audio))
    # A variant's bandwidth counts the audio it is played with: the group's largest rendition.
    audio_peak = max((t.peak_bandwidth for t in audio), default=0)
    audio_avg = max((t.bandwidth for t in audio), default=0)
    audio_codecs = tuple(dict.fromkeys(t.codec for t in audio))
    variants = tuple(hls.Variant(uri=media_playlist_name(t), bandwidth=max(1, t.peak_bandwidth + audio_peak),
                                 average_bandwidth=max(1, t.bandwidth + audio_avg),
                                 codecs=(t.codec, *audio_codecs), width=t.width, height=t.height,
                                 frame_rate=t.frame_rate or 0, audio_group=AUDIO_GROUP if audio else None)
                     for t in video)
    if variants:
        session_keys: tuple[hls.Key, ...] = ()
        if key is not None:
            # One per KID (key rotation has several), so a player can open every session early.
            kids = protection.kids or (protection.kid,)  # type: ignore[union-attr]
            session_keys = tuple(hls.clearkey_key(protection.scheme, kid)  # type: ignore[union-attr,arg-type]
                                 for kid in kids)
        master = hls.MasterPlaylist(variants=variants, audio=renditions, session_keys=session_keys)
        out[MASTER_NAME] = hls.write_master_playlist(master).encode()
    return out
