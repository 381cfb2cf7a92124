"""The DASH MPD writer (ISO/IEC 23009-1, static; ``isoff-live`` + CMAF profiles, no CMAF beside WebM). Sans-IO.

The packager describes what it wrote as frozen :class:`Representation` records (one per
track, with its own init segment, a ``$Number$`` media template and the duration of every
segment) plus an optional :class:`Protection` (scheme and default KID); :func:`write_mpd`
turns them into the MPD's bytes. Representations of one kind (video or audio, and for audio
one language) and one codec (H.264, HEVC, VP9, AAC, Opus) share an ``AdaptationSet``; their
protection is signalled there.

Protection signalling, in the order players look for it:

- ``urn:mpeg:dash:mp4protection:2011`` with ``value`` ``cenc`` or ``cbcs`` and
  ``cenc:default_KID`` (the KID as a UUID with dashes), which every player reads;
- the ClearKey system ``urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e`` WITHOUT a
  ``cenc:pssh`` child — dash.js refuses a ClearKey ContentProtection that carries one —
  optionally with ``dashif:Laurl`` naming the licence server (dash.js only honours that
  element under the prefixes ``dashif``, ``clearkey`` or ``ck``, so the prefix is fixed);
- optionally the W3C common system ``urn:uuid:1077efec-c0b2-4d02-ace3-3c1e52e2fb4b`` with
  its ``cenc:pssh`` (base64 of a whole ``pssh`` box), for players that want init data from
  the manifest rather than from the init segment. Off by default, and keep it off for dash.js:
  dash.js 5.2 maps that system to ClearKey too and fails to generate its key request from the
  pssh ("Error generating key request -- TypeError"), cenc and cbcs alike; Shaka Player 5.2
  plays either way (seen in Chromium 156 with our ClearKey output).

The XML is built with ElementTree: every value (URLs, ids, codec strings) is escaped by the
serialiser, never formatted into markup by hand. Namespace prefixes are declared on the root
as plain attributes and the prefixed names used literally, so the output does not depend on
ElementTree's process-wide prefix registry.

Segment timing: when every segment has the same duration (the last may be shorter, as DASH
allows with ``@duration``) the template carries ``duration``; otherwise a ``SegmentTimeline``
lists them, runs of equal durations collapsed with ``r``.

Key rotation: :func:`write_periods` writes one ``Period`` per key, each with its own
``ContentProtection`` (that period's ``cenc:default_KID``), its own init segment and a
``SegmentTimeline`` whose first ``t`` is the segment's ``tfdt`` (numbers and decode times run on
across periods). ``presentationTimeOffset`` is the period's ``@start`` in the track's timescale,
so a player's timestamp offset (``Period@start - presentationTimeOffset``) is zero in every
period and the media stays on the one continuous timeline it was cut from (dash.js and Shaka
Player both place a multi-period VOD's segments this way).
"""

from __future__ import annotations

import base64
import math
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

__all__ = [
    "Representation", "Protection", "Period", "write_mpd", "write_periods", "MPD_NS", "CENC_NS", "DASHIF_NS",
    "MP4PROTECTION_SCHEME", "CLEARKEY_SCHEME", "W3C_COMMON_SCHEME", "PROFILES", "codec_family",
]

MPD_NS = "urn:mpeg:dash:schema:mpd:2011"
CENC_NS = "urn:mpeg:cenc:2013"
#: DASH-IF content protection namespace (``dashif:Laurl``), as dash.js and Shaka Player read it.
DASHIF_NS = "https://dashif.org/CPS"
MP4PROTECTION_SCHEME = "urn:mpeg:dash:mp4protection:2011"
CLEARKEY_SCHEME = "urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e"
W3C_COMMON_SCHEME = "urn:uuid:1077efec-c0b2-4d02-ace3-3c1e52e2fb4b"
PROFILES = "urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019"
#: with WebM sets present: CMAF's profile claims that every set is CMAF, which WebM is not
NON_CMAF_PROFILES = "urn:mpeg:dash:profile:isoff-live:2011"
AUDIO_CHANNEL_SCHEME = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"

Kind = Literal["video", "audio"]
Scheme = Literal["cenc", "cbcs"]


def _check_text(name: str, value: str) -> None:
    # XML 1.0 cannot carry most control characters at all, escaped or not: refuse them here
    # rather than write a manifest no parser accepts.
    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in value):
        raise ValueError(f"{name} contains a control character: {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Protection:
    """How an adaptation set's segments are encrypted, for the manifest.

    ``default_kid`` is the 16-byte key id written in the tracks' ``tenc``. ``licence_url``,
    when set, is written as ``dashif:Laurl`` inside the ClearKey ContentProtection.
    ``w3c_pssh``, when set, is a whole ``pssh`` box for the W3C common system, written as
    ``cenc:pssh`` in its own ContentProtection (never in the ClearKey one); dash.js cannot
    play such an MPD (see the module's docstring).
    """

    scheme: Scheme
    default_kid: bytes
    licence_url: str | None = None
    w3c_pssh: bytes | None = None

    def __post_init__(self) -> None:
        if self.scheme not in ("cenc", "cbcs"):
            raise ValueError(f"protection scheme must be cenc or cbcs, not {self.scheme!r}")
        if len(self.default_kid) != 16:
            raise ValueError(f"default KID must be 16 bytes, not {len(self.default_kid)}")
        if self.licence_url is not None:
            _check_text("licence_url", self.licence_url)

    @property
    def kid_uuid(self) -> str:
        """The default KID as a UUID with dashes, as ``cenc:default_KID`` carries it."""
        return str(uuid.UUID(bytes=self.default_kid))


@dataclass(frozen=True, slots=True, kw_only=True)
class Representation:
    """One track as packaged: its own init segment and numbered media segments.

    ``init`` and ``media`` are URLs relative to the MPD; ``media`` holds ``$Number$`` (for
    example ``video/seg-$Number$.m4s``). ``segment_durations`` are in ``timescale`` units,
    first segment first, numbered from ``start_number``. Video sets ``width``, ``height`` and
    ``frame_rate`` (a Fraction, so 30000/1001 stays exact); audio sets ``sampling_rate`` and
    ``channels`` (and optionally ``language``, BCP 47).
    """

    id: str
    kind: Kind
    codecs: str
    bandwidth: int
    timescale: int
    init: str
    media: str
    segment_durations: tuple[int, ...]
    start_number: int = 1
    width: int | None = None
    height: int | None = None
    frame_rate: Fraction | None = None
    sampling_rate: int | None = None
    channels: int | None = None
    language: str | None = None
    protection: Protection | None = None
    #: the first segment's time on the timeline (its tfdt), and the media time at the period's start
    first_time: int = 0
    presentation_time_offset: int = 0
    #: the segments' container: "mp4" (CMAF) or "webm" (WebM DASH: its own adaptation set)
    container: str = "mp4"

    def __post_init__(self) -> None:
        if self.first_time < 0 or self.presentation_time_offset < 0:
            raise ValueError(f"representation {self.id!r}: times must be >= 0")
        if self.kind not in ("video", "audio"):
            raise ValueError(f"representation {self.id!r}: kind must be video or audio")
        if self.container not in ("mp4", "webm"):
            raise ValueError(f"representation {self.id!r}: container must be mp4 or webm")
        for name in ("id", "codecs", "init", "media"):
            value = getattr(self, name)
            if not value:
                raise ValueError(f"representation {self.id!r}: {name} is empty")
            _check_text(name, value)
        if "$Number$" not in self.media and "$Number%" not in self.media:
            raise ValueError(f"representation {self.id!r}: media template has no $Number$")
        if self.bandwidth <= 0 or self.timescale <= 0 or self.start_number < 0:
            raise ValueError(f"representation {self.id!r}: bandwidth and timescale must be > 0")
        if not self.segment_durations or any(d <= 0 for d in self.segment_durations):
            raise ValueError(f"representation {self.id!r}: segment durations must be > 0")
        if self.kind == "video":
            if not (self.width and self.height and self.frame_rate):
                raise ValueError(f"video {self.id!r} needs width, height and frame_rate")
        elif not (self.sampling_rate and self.channels):
            raise ValueError(f"audio {self.id!r} needs sampling_rate and channels")

    @property
    def duration_seconds(self) -> Fraction:
        """Total duration of the representation's segments."""
        return Fraction(sum(self.segment_durations), self.timescale)

    @property
    def mime_type(self) -> str:
        return f"{self.kind}/{self.container}"


def _xs_duration(seconds: Fraction) -> str:
    # xs:duration with seconds only (PT7200.5S is valid); millisecond precision, trailing
    # zeros dropped, so a 4 s title reads PT4S.
    millis = round(seconds * 1000)
    whole, frac = divmod(millis, 1000)
    return f"PT{whole}.{frac:03d}".rstrip("0") + "S" if frac else f"PT{whole}S"


def _frame_rate(rate: Fraction) -> str:
    rate = Fraction(rate)
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def _uniform_duration(durations: Sequence[int]) -> int | None:
    """The common duration if all segments but a shorter-or-equal last one share it."""
    first = durations[0]
    if all(d == first for d in durations[:-1]) and durations[-1] <= first:
        return first
    return None


def _timeline_runs(durations: Sequence[int]) -> list[tuple[int, int]]:
    """(duration, repeat count) runs: ``r`` in ``<S>`` counts repeats after the first."""
    runs: list[tuple[int, int]] = []
    for d in durations:
        if runs and runs[-1][0] == d:
            runs[-1] = (d, runs[-1][1] + 1)
        else:
            runs.append((d, 0))
    return runs


def _content_protection(parent: ET.Element, protection: Protection) -> None:
    ET.SubElement(parent, "ContentProtection", {
        "schemeIdUri": MP4PROTECTION_SCHEME, "value": protection.scheme,
        "cenc:default_KID": protection.kid_uuid,
    })
    clearkey = ET.SubElement(parent, "ContentProtection", {
        "schemeIdUri": CLEARKEY_SCHEME, "value": "ClearKey1.0",
    })
    if protection.licence_url is not None:
        laurl = ET.SubElement(clearkey, "dashif:Laurl", {"Lic_type": "EME-1.0"})
        laurl.text = protection.licence_url
    if protection.w3c_pssh is not None:
        common = ET.SubElement(parent, "ContentProtection", {
            "schemeIdUri": W3C_COMMON_SCHEME, "value": "cenc",
        })
        pssh = ET.SubElement(common, "cenc:pssh")
        pssh.text = base64.b64encode(protection.w3c_pssh).decode("ascii")


def _segment_template(parent: ET.Element, rep: Representation, force_timeline: bool,
                      period: Fraction) -> None:
    attrs = {
        "timescale": str(rep.timescale), "initialization": rep.init, "media": rep.media,
        "startNumber": str(rep.start_number),
    }
    if rep.presentation_time_offset:
        attrs["presentationTimeOffset"] = str(rep.presentation_time_offset)
    uniform = None if force_timeline else _uniform_duration(rep.segment_durations)
    if uniform is not None and math.ceil(period * rep.timescale / uniform) != len(rep.segment_durations):
        # With @duration a player counts ceil(period / duration) segments (ISO/IEC 23009-1
        # 5.3.9.5.3). When a longer track sets the period (AAC usually runs a few ms past the
        # video), that count is one more than this track has, and players ask for a segment
        # that does not exist: only a timeline says exactly which segments there are.
        uniform = None
    if uniform is not None:
        attrs["duration"] = str(uniform)
    template = ET.SubElement(parent, "SegmentTemplate", attrs)
    if uniform is None:
        timeline = ET.SubElement(template, "SegmentTimeline")
        first = True
        for d, repeat in _timeline_runs(rep.segment_durations):
            s_attrs = {"d": str(d)}
            if first:
                s_attrs = {"t": str(rep.first_time), **s_attrs}
                first = False
            if repeat:
                s_attrs["r"] = str(repeat)
            ET.SubElement(timeline, "S", s_attrs)


#: RFC 6381 sample-entry prefixes that name one codec (a player switches freely between
#: representations of one codec; across codecs it would need a new decoder).
_CODEC_FAMILY = {"avc1": "avc", "avc3": "avc", "hvc1": "hevc", "hev1": "hevc"}


def codec_family(codecs: str) -> str:
    """``avc1.64001f`` → ``avc``, ``vp09.00.10.08`` → ``vp09``, ``opus`` → ``opus``."""
    head = codecs.split(".", 1)[0].lower()
    return _CODEC_FAMILY.get(head, head)


def _adaptation_sets(reps: Sequence[Representation]) -> list[list[Representation]]:
    # One adaptation set per kind, language and codec: a player picks among representations
    # of one set seamlessly, so a set must be one decoder's; H.264 and VP9 renditions of one
    # title are two video sets, AAC and Opus two audio sets, and the player keeps those it
    # can decode (MediaSource.isTypeSupported) and adapts within one.
    # A container is a set's too (its mimeType): MSE takes one per SourceBuffer.
    groups: dict[tuple[str, str | None, str, str], list[Representation]] = {}
    for rep in reps:
        groups.setdefault((rep.kind, rep.language, codec_family(rep.codecs), rep.container), []).append(rep)
    # Video first: some players pick the first adaptation set's timing as the reference.
    return sorted(groups.values(), key=lambda g: g[0].kind != "video")


@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """One ``Period``: its ``start`` in seconds on the presentation timeline and its
    representations (their times in their own timescales, ``presentation_time_offset`` being
    ``start`` in those)."""

    start: Fraction
    representations: tuple[Representation, ...]

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ValueError("a period cannot start before 0")
        if not self.representations:
            raise ValueError("a period needs at least one representation")


def write_mpd(
    representations: Sequence[Representation], *, min_buffer_seconds: int = 2,
    force_timeline: bool = False,
) -> bytes:
    """The static MPD (UTF-8 bytes, with an XML declaration) describing ``representations``
    in one period.

    Raises ValueError for an empty list, duplicate ids, or representations sharing an
    adaptation set (same kind and language) with different protection.
    """
    if not representations:
        raise ValueError("an MPD needs at least one representation")
    return write_periods([Period(start=Fraction(0), representations=tuple(representations))],
                         min_buffer_seconds=min_buffer_seconds, force_timeline=force_timeline)


def _period_end(period: Period) -> Fraction:
    # Where the period's longest representation ends: its first segment's place after the
    # period start, plus its segments.
    return period.start + max(
        Fraction(r.first_time - r.presentation_time_offset, r.timescale) + r.duration_seconds
        for r in period.representations)


def write_periods(
    periods: Sequence[Period], *, min_buffer_seconds: int = 2, force_timeline: bool = False,
) -> bytes:
    """The static MPD with one ``Period`` per entry of ``periods`` (in order, starts rising).
    With more than one period every template carries a ``SegmentTimeline`` and each period its
    ``@duration`` (the next one's start less its own; the last's runs to the end)."""
    if not periods:
        raise ValueError("an MPD needs at least one period")
    if any(b.start <= a.start for a, b in zip(periods, periods[1:])):
        raise ValueError("period starts must rise")
    multi = len(periods) > 1
    all_reps = [r for p in periods for r in p.representations]
    for p in periods:
        ids = [r.id for r in p.representations]
        if len(set(ids)) != len(ids):
            raise ValueError(f"representation ids are not unique: {ids}")
    protected = any(r.protection is not None for r in all_reps)
    uses_laurl = any(r.protection is not None and r.protection.licence_url is not None for r in all_reps)
    # the presentation's duration as the MPD states it (milliseconds), which players count with
    end = _period_end(periods[-1])
    total = Fraction(round(end * 1000), 1000)

    root_attrs = {"xmlns": MPD_NS}
    if protected:
        root_attrs["xmlns:cenc"] = CENC_NS
    if uses_laurl:
        root_attrs["xmlns:dashif"] = DASHIF_NS
    root_attrs.update({
        "type": "static",
        "profiles": NON_CMAF_PROFILES if any(r.container == "webm" for r in all_reps) else PROFILES,
        "minBufferTime": _xs_duration(Fraction(min_buffer_seconds)),
        "mediaPresentationDuration": _xs_duration(total),
    })
    mpd = ET.Element("MPD", root_attrs)
    for n, p in enumerate(periods):
        attrs = {"id": str(n), "start": _xs_duration(p.start)}
        if multi:
            next_start = periods[n + 1].start if n + 1 < len(periods) else total
            attrs["duration"] = _xs_duration(next_start - p.start)
        element = ET.SubElement(mpd, "Period", attrs)
        _write_period(element, p.representations, force_timeline or multi, total - p.start)
    ET.indent(mpd)
    return ET.tostring(mpd, encoding="utf-8", xml_declaration=True) + b"\n"


def _write_period(period: ET.Element, representations: Sequence[Representation], force_timeline: bool,
                  period_duration: Fraction) -> None:
    for index, group in enumerate(_adaptation_sets(representations)):
        first = group[0]
        protections = {r.protection for r in group}
        if len(protections) > 1:
            raise ValueError(
                f"representations {[r.id for r in group]} share an adaptation set but not "
                "their protection")
        set_attrs = {
            "id": str(index), "contentType": first.kind, "mimeType": first.mime_type,
            "segmentAlignment": "true", "startWithSAP": "1",
        }
        if first.language:
            _check_text("language", first.language)
            set_attrs["lang"] = first.language
        if first.kind == "video":
            set_attrs["maxWidth"] = str(max(r.width or 0 for r in group))
            set_attrs["maxHeight"] = str(max(r.height or 0 for r in group))
        aset = ET.SubElement(period, "AdaptationSet", set_attrs)
        if first.protection is not None:
            _content_protection(aset, first.protection)
        for rep in sorted(group, key=lambda r: r.bandwidth):
            rep_attrs = {"id": rep.id, "bandwidth": str(rep.bandwidth), "codecs": rep.codecs}
            if rep.kind == "video":
                assert rep.frame_rate is not None
                rep_attrs.update({
                    "width": str(rep.width), "height": str(rep.height),
                    "frameRate": _frame_rate(rep.frame_rate), "sar": "1:1",
                })
            else:
                rep_attrs["audioSamplingRate"] = str(rep.sampling_rate)
            element = ET.SubElement(aset, "Representation", rep_attrs)
            if rep.kind == "audio":
                ET.SubElement(element, "AudioChannelConfiguration", {
                    "schemeIdUri": AUDIO_CHANNEL_SCHEME, "value": str(rep.channels),
                })
            _segment_template(element, rep, force_timeline, period_duration)

