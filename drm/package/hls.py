"""HLS playlists (RFC 8216) for fMP4/CMAF output: the master and one media playlist per track.
Sans-IO: frozen records in, text out.

Keys (``#EXT-X-KEY`` in media playlists, ``#EXT-X-SESSION-KEY`` in the master):

- ``cbcs`` is ``METHOD=SAMPLE-AES`` and ``cenc`` is ``METHOD=SAMPLE-AES-CTR`` (the name Apple
  and hls.js use for CTR-mode common encryption in fMP4);
- for ClearKey through EME, hls.js (1.x) matches ``KEYFORMAT="org.w3.clearkey"`` to the key
  system ``org.w3.clearkey`` and takes the key id from ``KEYID=0x…`` (or, lacking it, from a
  ``data:`` URI's first 16 bytes); :func:`clearkey_key` writes both, with the KID as the
  data URI's payload, so the key tag names its key whichever way a player reads it. The
  licence URL is the player's configuration, not the playlist's. hls.js 1.7 opens its key
  session from the media element's ``encrypted`` event, so the init segments must carry a
  ``pssh`` box (the W3C common system's, v1 with the KID, is enough): without one it never
  asks for a licence and stalls waiting for the key (seen in Chromium 156; the DASH players
  need no pssh, they build their request from ``cenc:default_KID``). Shaka Player's HLS parser
  does not know this KEYFORMAT (its error 4026); it plays our DASH instead;
- ``METHOD=AES-128`` (whole-segment CBC with PKCS#7, ``KEYFORMAT="identity"``, the key
  fetched from ``URI``) for clear-content packaging where asked.

Key rotation: at each period's first segment a new ``#EXT-X-KEY`` (that period's KEYID) and
then a new ``#EXT-X-MAP`` (that period's init segment, whose ``tenc`` names the KID); no
``#EXT-X-DISCONTINUITY``, since timestamps run on across the switch (RFC 8216 §4.3.2.3 wants
one only where they or the encoding parameters jump). The master carries one
``#EXT-X-SESSION-KEY`` per KID.

Versions follow RFC 8216 §7: 6 for ``#EXT-X-MAP`` in a media playlist (fMP4 always has one),
5 for SAMPLE-AES or KEYFORMAT, 2 for an IV, 3 for decimal ``#EXTINF``; each playlist carries
the least version its own tags need.

Attribute values are written through :func:`quoted`, which refuses what a quoted-string
cannot carry (``"``, CR, LF) instead of escaping it: RFC 8216 quoted strings have no escapes.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

__all__ = [
    "Key", "MediaPlaylist", "Variant", "AudioRendition", "MasterPlaylist",
    "write_media_playlist", "write_master_playlist", "clearkey_key", "aes128_key", "quoted",
    "CLEARKEY_KEYFORMAT", "METHOD_OF_SCHEME",
]

CLEARKEY_KEYFORMAT = "org.w3.clearkey"
METHOD_OF_SCHEME = {"cbcs": "SAMPLE-AES", "cenc": "SAMPLE-AES-CTR"}
Method = Literal["AES-128", "SAMPLE-AES", "SAMPLE-AES-CTR"]


def quoted(value: str) -> str:
    """``value`` as an RFC 8216 quoted-string; ValueError if it holds ``"``, CR or LF."""
    if any(c in value for c in '"\r\n'):
        raise ValueError(f"cannot be an HLS quoted-string: {value!r}")
    return f'"{value}"'


def _uri_line(uri: str) -> str:
    if not uri or any(c in uri for c in "\r\n") or uri.startswith("#"):
        raise ValueError(f"not a playlist URI line: {uri!r}")
    return uri


@dataclass(frozen=True, slots=True, kw_only=True)
class Key:
    """One ``#EXT-X-KEY`` / ``#EXT-X-SESSION-KEY``: ``method``, key ``uri``, optional
    ``key_format`` (None means the implicit ``identity``), ``key_format_versions``, 16-byte
    ``kid`` (written as ``KEYID=0x…``) and 16-byte ``iv``."""

    method: Method
    uri: str
    key_format: str | None = None
    key_format_versions: str | None = None
    kid: bytes | None = None
    iv: bytes | None = None

    def __post_init__(self) -> None:
        if self.method not in ("AES-128", "SAMPLE-AES", "SAMPLE-AES-CTR"):
            raise ValueError(f"unknown HLS key method {self.method!r}")
        if self.kid is not None and len(self.kid) != 16:
            raise ValueError("KEYID must be 16 bytes")
        if self.iv is not None and len(self.iv) != 16:
            raise ValueError("IV must be 16 bytes")
        quoted(self.uri)
        if self.key_format is not None:
            quoted(self.key_format)
        if self.key_format_versions is not None:
            quoted(self.key_format_versions)

    def attributes(self) -> str:
        """The attribute list after ``#EXT-X-KEY:``."""
        parts = [f"METHOD={self.method}", f"URI={quoted(self.uri)}"]
        if self.iv is not None:
            parts.append(f"IV=0x{self.iv.hex().upper()}")
        if self.kid is not None:
            parts.append(f"KEYID=0x{self.kid.hex().upper()}")
        if self.key_format is not None:
            parts.append(f"KEYFORMAT={quoted(self.key_format)}")
        if self.key_format_versions is not None:
            parts.append(f"KEYFORMATVERSIONS={quoted(self.key_format_versions)}")
        return ",".join(parts)

    @property
    def min_version(self) -> int:
        version = 1
        if self.iv is not None:
            version = 2
        if self.method != "AES-128" or self.key_format is not None:
            version = 5
        return version


def clearkey_key(scheme: Literal["cenc", "cbcs"], kid: bytes) -> Key:
    """The key tag for ClearKey EME playback of ``scheme``-encrypted fMP4 with key id ``kid``."""
    if scheme not in METHOD_OF_SCHEME:
        raise ValueError(f"scheme must be cenc or cbcs, not {scheme!r}")
    if len(kid) != 16:
        raise ValueError("KID must be 16 bytes")
    uri = "data:text/plain;base64," + base64.b64encode(kid).decode("ascii")
    return Key(method=METHOD_OF_SCHEME[scheme], uri=uri, key_format=CLEARKEY_KEYFORMAT,
               key_format_versions="1", kid=kid)  # type: ignore[arg-type]


def aes128_key(uri: str, iv: bytes | None = None) -> Key:
    """Classic whole-segment ``AES-128`` with the key served at ``uri``."""
    return Key(method="AES-128", uri=uri, iv=iv)


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaPlaylist:
    """One track's VOD media playlist: its init segment ``init_uri``, its media segment URIs
    (``segment_uris``, first first) and their durations in ``timescale`` units, and the key
    (None for clear content). ``key`` applies from the top: to the init segment and to every
    segment; ``segment_keys`` (empty, or one per segment) gives each segment its own (classic
    AES-128 with an explicit IV per segment), written before a segment whenever it differs from
    the key in effect."""

    init_uri: str
    segment_uris: tuple[str, ...]
    segment_durations: tuple[int, ...]
    timescale: int
    key: Key | None = None
    media_sequence: int = 0
    segment_keys: tuple[Key, ...] = ()
    #: empty, or one init segment URI per segment: a new EXT-X-MAP where it changes
    segment_maps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.segment_uris or len(self.segment_uris) != len(self.segment_durations):
            raise ValueError("one duration per segment URI, and at least one segment")
        if self.timescale <= 0 or any(d <= 0 for d in self.segment_durations):
            raise ValueError("timescale and segment durations must be > 0")
        for uri in self.segment_uris:
            _uri_line(uri)
        quoted(self.init_uri)
        if self.segment_keys and len(self.segment_keys) != len(self.segment_uris):
            raise ValueError("segment_keys: one key per segment, or none")
        if self.segment_maps and len(self.segment_maps) != len(self.segment_uris):
            raise ValueError("segment_maps: one init segment per segment, or none")
        for uri in self.segment_maps:
            quoted(uri)

    @classmethod
    def numbered(cls, *, init_uri: str, template: str, start_number: int,
                 segment_durations: Sequence[int], timescale: int,
                 key: Key | None = None, segment_keys: Sequence[Key] = (),
                 segment_maps: Sequence[str] = ()) -> MediaPlaylist:
        """A playlist whose segment URIs come from a DASH-style ``$Number$`` template."""
        if "$Number$" not in template:
            raise ValueError(f"template has no $Number$: {template!r}")
        uris = tuple(template.replace("$Number$", str(start_number + i))
                     for i in range(len(segment_durations)))
        return cls(init_uri=init_uri, segment_uris=uris,
                   segment_durations=tuple(segment_durations), timescale=timescale, key=key,
                   segment_keys=tuple(segment_keys), segment_maps=tuple(segment_maps))

    @property
    def target_duration(self) -> int:
        """EXT-X-TARGETDURATION: the longest segment rounded to the nearest integer (RFC
        8216 §4.3.3.1), never below any segment's rounded duration."""
        longest = Fraction(max(self.segment_durations), self.timescale)
        return max(1, math.floor(longest + Fraction(1, 2)))


def _extinf(duration: int, timescale: int) -> str:
    # Decimal seconds with millisecond precision; a duration must not be written shorter
    # than it is by more than rounding, so round half up.
    millis = (duration * 1000 * 2 + timescale) // (2 * timescale)
    return f"{millis // 1000}.{millis % 1000:03d}"


def write_media_playlist(playlist: MediaPlaylist) -> str:
    """The media playlist's text (``#EXTM3U`` … ``#EXT-X-ENDLIST``, LF line ends)."""
    version = 6  # EXT-X-MAP in a non-I-frame playlist; covers decimal EXTINF (3) and IV (2)
    for key in (playlist.key, *playlist.segment_keys):
        if key is not None:
            version = max(version, key.min_version)
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{version}",
        f"#EXT-X-TARGETDURATION:{playlist.target_duration}",
        f"#EXT-X-MEDIA-SEQUENCE:{playlist.media_sequence}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    if playlist.key is not None:
        # The key applies to the init segment declared after it as well (RFC 8216 §4.3.2.4).
        lines.append(f"#EXT-X-KEY:{playlist.key.attributes()}")
    lines.append(f"#EXT-X-MAP:URI={quoted(playlist.init_uri)}")
    in_effect = playlist.key
    map_in_effect = playlist.init_uri
    for i, (uri, duration) in enumerate(zip(playlist.segment_uris, playlist.segment_durations)):
        if playlist.segment_keys and playlist.segment_keys[i] != in_effect:
            in_effect = playlist.segment_keys[i]
            lines.append(f"#EXT-X-KEY:{in_effect.attributes()}")
        if playlist.segment_maps and playlist.segment_maps[i] != map_in_effect:
            # After the key tag: the key in effect applies to the init segment too.
            map_in_effect = playlist.segment_maps[i]
            lines.append(f"#EXT-X-MAP:URI={quoted(map_in_effect)}")
        lines.append(f"#EXTINF:{_extinf(duration, playlist.timescale)},")
        lines.append(_uri_line(uri))
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioRendition:
    """An ``#EXT-X-MEDIA:TYPE=AUDIO`` rendition in group ``group_id``."""

    group_id: str
    name: str
    uri: str
    channels: int
    language: str | None = None
    default: bool = True

    def __post_init__(self) -> None:
        for value in (self.group_id, self.name, self.uri):
            quoted(value)
        if self.language is not None:
            quoted(self.language)
        if self.channels <= 0:
            raise ValueError("channels must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """An ``#EXT-X-STREAM-INF`` variant: peak ``bandwidth`` and ``average_bandwidth`` (bits/s,
    the audio group's included), ``codecs`` of every track it plays (video and audio, RFC
    6381), resolution and frame rate, and the audio group it uses."""

    uri: str
    bandwidth: int
    average_bandwidth: int
    codecs: tuple[str, ...]
    width: int
    height: int
    frame_rate: Fraction
    audio_group: str | None = None

    def __post_init__(self) -> None:
        _uri_line(self.uri)
        if self.bandwidth <= 0 or self.average_bandwidth <= 0:
            raise ValueError("variant bandwidths must be > 0")
        if not self.codecs:
            raise ValueError("a variant must list its codecs")
        quoted(",".join(self.codecs))
        if self.audio_group is not None:
            quoted(self.audio_group)


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterPlaylist:
    """The master playlist: variants, audio renditions, and session keys (one per KID and
    key format, so a player can open its key session before the first media playlist)."""

    variants: tuple[Variant, ...]
    audio: tuple[AudioRendition, ...] = ()
    session_keys: tuple[Key, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("a master playlist needs at least one variant")
        groups = {a.group_id for a in self.audio}
        for v in self.variants:
            if v.audio_group is not None and v.audio_group not in groups:
                raise ValueError(f"variant {v.uri!r} names unknown audio group {v.audio_group!r}")


def write_master_playlist(master: MasterPlaylist) -> str:
    """The master playlist's text."""
    version = max([1] + [k.min_version for k in master.session_keys])
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for key in master.session_keys:
        lines.append(f"#EXT-X-SESSION-KEY:{key.attributes()}")
    for a in master.audio:
        parts = [
            "TYPE=AUDIO", f"GROUP-ID={quoted(a.group_id)}", f"NAME={quoted(a.name)}",
        ]
        if a.language is not None:
            parts.append(f"LANGUAGE={quoted(a.language)}")
        parts += [
            f"DEFAULT={'YES' if a.default else 'NO'}", "AUTOSELECT=YES",
            f"CHANNELS={quoted(str(a.channels))}", f"URI={quoted(a.uri)}",
        ]
        lines.append("#EXT-X-MEDIA:" + ",".join(parts))
    for v in sorted(master.variants, key=lambda v: v.bandwidth):
        parts = [
            f"BANDWIDTH={v.bandwidth}", f"AVERAGE-BANDWIDTH={v.average_bandwidth}",
            f"CODECS={quoted(','.join(v.codecs))}", f"RESOLUTION={v.width}x{v.height}",
            f"FRAME-RATE={float(v.frame_rate):.3f}",
        ]
        if v.audio_group is not None:
            parts.append(f"AUDIO={quoted(v.audio_group)}")
        lines.append("#EXT-X-STREAM-INF:" + ",".join(parts))
        lines.append(_uri_line(v.uri))
    return "\n".join(lines) + "\n"
