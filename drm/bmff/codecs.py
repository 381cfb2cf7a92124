"""Sample entries' codec details: dimensions, audio parameters and RFC 6381 codec strings. Sans-IO.

A sample entry (one child of ``stsd``) is read here for what a manifest needs: the
``codecs`` string (``avc1.64001f``, ``hvc1.1.6.L93.B0``, ``vp09.00.10.08``, ``mp4a.40.2``,
``opus``), the picture size, the audio sample rate and channel count. Only the codecs the packager
takes are known — H.264 (``avc1``/``avc3``), HEVC (``hvc1``/``hev1``), VP9 (``vp09`` with its
``vpcC``, the VP Codec ISO Media File Format Binding), AAC (``mp4a`` with an MPEG-4 or MPEG-2 AAC
object type) and Opus (``Opus`` with its ``dOps``, Encapsulation of Opus in ISOBMFF); anything
else is :class:`~headwater.drm.errors.UnsupportedMedia`, and a configuration record that does not
fit its box is :class:`~headwater.drm.errors.MalformedMedia`.
"""

from __future__ import annotations

from dataclasses import dataclass

from headwater.drm.bmff.box import ByteReader, find_box, parse_header
from headwater.drm.errors import MalformedMedia, UnsupportedMedia

__all__ = [
    "CodecInfo", "read_sample_entry", "VIDEO_FORMATS", "AUDIO_FORMATS",
    "VISUAL_ENTRY_FIELDS", "AUDIO_ENTRY_FIELDS",
]

VIDEO_FORMATS = frozenset({b"avc1", b"avc3", b"hvc1", b"hev1", b"vp09"})
AUDIO_FORMATS = frozenset({b"mp4a", b"Opus"})

#: Bytes of a VisualSampleEntry's fields after its header, before its child boxes.
VISUAL_ENTRY_FIELDS = 78
#: Bytes of a (version 0) AudioSampleEntry's fields after its header, before its child boxes.
AUDIO_ENTRY_FIELDS = 28

#: MPEG-4 (0x40) and MPEG-2 AAC (0x66 Main, 0x67 LC, 0x68 SSR) objectTypeIndication values.
_AAC_OBJECT_TYPES = frozenset({0x40, 0x66, 0x67, 0x68})
_AAC_FREQUENCIES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000,
                    11025, 8000, 7350)


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecInfo:
    """What one sample entry says: its four-character ``format``, the RFC 6381 ``codec``
    string, and either the picture size (video) or sample rate and channels (audio; 0 for
    video, and the picture size is 0 for audio)."""

    format: bytes
    codec: str
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0


def read_sample_entry(entry: bytes | memoryview, handler: bytes) -> CodecInfo:
    """The codec details of ``entry`` (the whole sample entry box, header included) in a track
    whose handler is ``handler`` (``b"vide"`` or ``b"soun"``)."""
    h = parse_header(entry, 0)
    if h.end != len(entry):
        raise MalformedMedia(f"sample entry {h.name}: {len(entry) - h.end} bytes after it")
    if handler == b"vide":
        if h.type not in VIDEO_FORMATS:
            raise UnsupportedMedia(f"video format {h.name!r} (only H.264 avc1/avc3, HEVC "
                                   "hvc1/hev1 and VP9 vp09 are packaged)")
        return _visual(entry, h)
    if handler == b"soun":
        if h.type not in AUDIO_FORMATS:
            raise UnsupportedMedia(f"audio format {h.name!r} (only AAC mp4a and Opus are packaged)")
        return _audio(entry, h)
    raise UnsupportedMedia(f"track handler {handler!r}")


def _visual(entry: bytes | memoryview, h) -> CodecInfo:
    r = ByteReader.of(entry, h)
    r.skip(6 + 2 + 16)      # reserved, data_reference_index, pre_defined and reserved
    width, height = r.u16(), r.u16()
    r.skip(VISUAL_ENTRY_FIELDS - 28)
    children = r.pos
    if h.type in (b"avc1", b"avc3"):
        cfg = find_box(entry, b"avcC", children, h.end)
        if cfg is None:
            raise MalformedMedia(f"{h.name} sample entry without its avcC")
        c = ByteReader.of(entry, cfg)
        if c.u8() != 1:
            raise UnsupportedMedia("avcC configurationVersion other than 1")
        profile, compat, level = c.u8(), c.u8(), c.u8()
        codec = f"{h.name}.{profile:02x}{compat:02x}{level:02x}"
    elif h.type == b"vp09":
        cfg = find_box(entry, b"vpcC", children, h.end)
        if cfg is None:
            raise MalformedMedia("vp09 sample entry without its vpcC")
        codec = _vp9_codec(ByteReader.of(entry, cfg))
    else:
        cfg = find_box(entry, b"hvcC", children, h.end)
        if cfg is None:
            raise MalformedMedia(f"{h.name} sample entry without its hvcC")
        codec = f"{h.name}.{_hevc_suffix(ByteReader.of(entry, cfg))}"
    if width == 0 or height == 0:
        raise MalformedMedia(f"{h.name} sample entry with a {width}x{height} picture")
    return CodecInfo(format=h.type, codec=codec, width=width, height=height)


def _hevc_suffix(c: ByteReader) -> str:
    """``<space><profile>.<compat>.<tier><level>.<constraints>`` (ISO/IEC 14496-15 Annex E)."""
    if c.u8() != 1:
        raise UnsupportedMedia("hvcC configurationVersion other than 1")
    b = c.u8()
    space, tier, profile = b >> 6, (b >> 5) & 1, b & 0x1F
    compat = c.u32()
    constraints = c.bytes(6)
    level = c.u8()
    # The compatibility flags are written in reverse bit order, in hex without leading zeros.
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    parts = [f"{'' if space == 0 else 'ABC'[space - 1]}{profile}", f"{reversed_compat:x}",
             f"{'HL'[tier == 0]}{level}"]
    kept = constraints.rstrip(b"\x00")
    parts.extend(f"{x:x}".upper() for x in kept)
    return ".".join(parts)


def _vp9_codec(c: ByteReader) -> str:
    """``vp09.PP.LL.DD``: profile, level and bit depth as two decimal digits each (the
    binding's mandatory fields; the optional colour fields are left at their defaults, which is
    what every 8-bit 4:2:0 BT.709 encode has). ``vpcC`` version 1 is the binding's; version 0
    (an early draft, 4-bit ``bitDepth`` and colour space) keeps the same first three fields."""
    version, _flags = c.full_header()
    if version not in (0, 1):
        raise UnsupportedMedia(f"vpcC version {version} (0 or 1)")
    profile, level, bits = c.u8(), c.u8(), c.u8() >> 4
    if profile > 3 or bits not in (8, 10, 12):
        raise MalformedMedia(f"vpcC: profile {profile}, bit depth {bits}")
    if level == 0:
        # Some muxers leave the level unset; level 0 is no level at all, and a codecs string
        # with it is refused by players (the binding calls it an error): name the highest.
        level = 62
    return f"vp09.{profile:02d}.{level:02d}.{bits:02d}"


def _audio(entry: bytes | memoryview, h) -> CodecInfo:
    r = ByteReader.of(entry, h)
    r.skip(6 + 2)
    version = r.u16()
    r.skip(6)
    channels, _bits = r.u16(), r.u16()
    r.skip(4)
    rate = r.u32() >> 16
    # QuickTime sound description versions 1 and 2 put more fields before the children.
    if version == 1:
        r.skip(16)
    elif version != 0:
        raise UnsupportedMedia(f"audio sample entry version {version}")
    if h.type == b"Opus":
        return _opus(entry, h, r.pos)
    esds = find_box(entry, b"esds", r.pos, h.end)
    if esds is None:
        raise MalformedMedia("mp4a sample entry without its esds")
    oti, asc = _es_descriptor(ByteReader.of(entry, esds))
    if oti not in _AAC_OBJECT_TYPES:
        raise UnsupportedMedia(f"mp4a objectTypeIndication 0x{oti:02x} (only AAC is packaged)")
    aot = 2 if oti != 0x40 else 0
    if asc:
        aot, asc_rate, asc_channels = _audio_specific_config(asc)
        rate = asc_rate or rate
        channels = asc_channels or channels
    if oti != 0x40:
        # MPEG-2 AAC is signalled by its objectTypeIndication alone (RFC 6381 §3.3).
        codec = f"mp4a.{oti:02x}"
    else:
        codec = f"mp4a.40.{aot}"
    if rate == 0 or channels == 0:
        raise MalformedMedia(f"mp4a sample entry with {rate} Hz, {channels} channels")
    return CodecInfo(format=h.type, codec=codec, sample_rate=rate, channels=channels)


def _opus(entry: bytes | memoryview, h, children: int) -> CodecInfo:
    """An ``Opus`` entry: channels from its ``dOps`` (OutputChannelCount); Opus always decodes
    at 48 kHz whatever InputSampleRate says, and the sample entry's rate must be 48000."""
    dops = find_box(entry, b"dOps", children, h.end)
    if dops is None:
        raise MalformedMedia("Opus sample entry without its dOps")
    c = ByteReader.of(entry, dops)
    if c.u8() != 0:
        raise UnsupportedMedia("dOps version other than 0")
    channels = c.u8()
    c.skip(2 + 4 + 2)       # PreSkip, InputSampleRate, OutputGain
    family = c.u8()
    if family != 0 and c.remaining < 2 + channels:
        raise MalformedMedia(f"dOps: mapping family {family} without its channel mapping table")
    if channels == 0:
        raise MalformedMedia("dOps with 0 output channels")
    return CodecInfo(format=h.type, codec="opus", sample_rate=48000, channels=channels)


def _descriptor(r: ByteReader) -> tuple[int, int]:
    """(tag, end) of the MPEG-4 descriptor at the reader's position; its size (up to four
    7-bit bytes) is checked against what is left."""
    tag = r.u8()
    size = 0
    for _ in range(4):
        b = r.u8()
        size = (size << 7) | (b & 0x7F)
        if not b & 0x80:
            break
    if size > r.remaining:
        raise MalformedMedia(f"esds: descriptor 0x{tag:02x} of {size} bytes, "
                             f"{r.remaining} there")
    return tag, r.pos + size


def _es_descriptor(r: ByteReader) -> tuple[int, bytes]:
    """(objectTypeIndication, AudioSpecificConfig bytes or b"") from an ``esds`` payload."""
    r.full_header()
    tag, end = _descriptor(r)
    if tag != 0x03:
        raise MalformedMedia(f"esds: ES_Descriptor expected, tag 0x{tag:02x}")
    r.skip(2)
    flags = r.u8()
    if flags & 0x80:
        r.skip(2)
    if flags & 0x40:
        r.skip(r.u8())
    if flags & 0x20:
        r.skip(2)
    while r.pos < end:
        tag, sub_end = _descriptor(r)
        if tag == 0x04:
            oti = r.u8()
            r.skip(12)    # stream type, buffer size, max and average bitrate
            asc = b""
            if r.pos < sub_end:
                tag, dsi_end = _descriptor(r)
                if tag == 0x05:
                    asc = r.bytes(dsi_end - r.pos)
            return oti, asc
        r.skip(sub_end - r.pos)
    raise MalformedMedia("esds without a DecoderConfigDescriptor")


def _audio_specific_config(asc: bytes) -> tuple[int, int, int]:
    """(audio object type, sample rate or 0, channels or 0) from an AudioSpecificConfig."""
    bits = int.from_bytes(asc[:8], "big")
    avail = 8 * min(len(asc), 8)
    pos = 0

    def take(n: int) -> int:
        nonlocal pos
        if pos + n > avail:
            raise MalformedMedia("AudioSpecificConfig shorter than its fields")
        pos += n
        return (bits >> (avail - pos)) & ((1 << n) - 1)

    aot = take(5)
    if aot == 31:
        aot = 32 + take(6)
    index = take(4)
    rate = take(24) if index == 0xF else (_AAC_FREQUENCIES[index] if index < 13 else 0)
    channels = take(4)
    # Channel configuration 7 is 7.1 (eight channels); 0 means "given in a program config".
    channels = 8 if channels == 7 else channels
    return aot, rate, channels
