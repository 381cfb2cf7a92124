"""Common-encryption boxes (ISO/IEC 23001-7 and 14496-12 §8.12): build and parse. Sans-IO.

What a protected track carries:

* in the ``moov``: its sample entry renamed ``encv``/``enca`` with a ``sinf`` appended
  (``frma`` keeps the original format, ``schm`` names the scheme, ``schi``/``tenc`` the default
  KID, the per-sample IV size, and for ``cbcs`` the pattern and the constant IV), and ``pssh``
  boxes for the DRM systems (the W3C common one lists the KIDs);
* in each ``traf``: ``saiz`` (each sample's auxiliary-information size), ``saio`` (where that
  information starts, relative to the ``moof`` under CMAF's ``default-base-is-moof``) and
  ``senc`` (per sample: its IV, then the subsample table when flag 0x2 is set).

For ``cbcs`` with a constant IV the per-sample IV size is 0, so a sample's auxiliary
information is only its subsample table and ``saio`` points at the first subsample count.

Every parser is bounded: counts are checked against the bytes there before entries are read,
and each returns a frozen dataclass. The writers produce exactly what the parsers read back.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from headwater.drm.bmff.box import BoxHeader, ByteReader, box, find_box, full_box, iter_boxes, parse_header
from headwater.drm.errors import MalformedMedia, UnsupportedMedia

__all__ = [
    "Subsample", "SampleAux", "COMMON_SYSTEM_ID", "SCHEME_VERSION", "MAX_CLEAR", "MAX_AUX_SIZE",
    "Tenc", "Sinf", "Pssh", "Senc", "Saiz", "Saio",
    "tenc_box", "sinf_box", "pssh_box", "senc_box", "saiz_box", "saio_box", "aux_boxes",
    "parse_tenc", "parse_sinf", "parse_pssh", "parse_senc", "parse_saiz", "parse_saio",
    "protect_sample_entry", "ENCRYPTED_ENTRY", "VISUAL_ENTRY_FIELDS", "AUDIO_ENTRY_FIELDS",
    "per_sample_iv_size",
]

#: The W3C "common" PSSH system id (Common SystemID and PSSH Box Format): v1 boxes list KIDs.
COMMON_SYSTEM_ID = uuid.UUID("1077efec-c0b2-4d02-ace3-3c1e52e2fb4b").bytes
#: ``schm`` scheme_version for 'cenc' and 'cbcs' (major 1, minor 0).
SCHEME_VERSION = 0x00010000
#: A subsample's clear-byte count is 16 bits; longer clear runs take several subsamples.
MAX_CLEAR = 0xFFFF
#: ``saiz`` sizes are 8 bits: a sample's IV plus subsample table must fit in 255 bytes.
MAX_AUX_SIZE = 0xFF
_MAX_PROTECTED = 0xFFFFFFFF

#: Original sample-entry type -> its protected form (14496-12 §8.12: encv for visual, enca for audio).
ENCRYPTED_ENTRY = {b"avc1": b"encv", b"avc3": b"encv", b"hvc1": b"encv", b"hev1": b"encv",
                   b"vp09": b"encv", b"mp4a": b"enca", b"Opus": b"enca"}
#: Bytes of fixed fields in a VisualSampleEntry's payload before its child boxes
#: (SampleEntry's 6 reserved + data_reference_index, then 70 bytes of visual fields).
VISUAL_ENTRY_FIELDS = 78
#: The same for a version-0 AudioSampleEntry (8 + 20).
AUDIO_ENTRY_FIELDS = 28


@dataclass(frozen=True, slots=True)
class Subsample:
    """One subsample: ``clear`` bytes left as they are, then ``protected`` bytes encrypted (for
    ``cbcs`` only the pattern's blocks among them). ``clear`` fits 16 bits, ``protected`` 32."""

    clear: int
    protected: int

    def __post_init__(self) -> None:
        if not 0 <= self.clear <= MAX_CLEAR or not 0 <= self.protected <= _MAX_PROTECTED:
            raise ValueError(f"subsample out of range: clear {self.clear}, protected {self.protected}")


@dataclass(frozen=True, slots=True)
class SampleAux:
    """A sample's encryption parameters: its ``iv`` (8 or 16 bytes for ``cenc``; the track's
    constant IV for ``cbcs``, which ``senc`` does not repeat) and its ``subsamples`` (empty for a
    sample encrypted whole, such as audio)."""

    iv: bytes
    subsamples: tuple[Subsample, ...] = ()


def per_sample_iv_size(scheme: str, iv_len: int) -> int:
    """The IV bytes each sample carries in ``senc``: ``cbcs`` uses a constant IV (0 per sample)."""
    if scheme == "cbcs":
        return 0
    if scheme == "cenc":
        if iv_len not in (8, 16):
            raise ValueError(f"cenc IVs are 8 or 16 bytes, not {iv_len}")
        return iv_len
    raise UnsupportedMedia(f"protection scheme {scheme!r} (only cenc and cbcs)")


# --- tenc / sinf -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tenc:
    """A Track Encryption box: the defaults every sample of the track uses."""

    version: int
    is_protected: int
    per_sample_iv_size: int
    kid: bytes
    crypt_byte_block: int = 0
    skip_byte_block: int = 0
    constant_iv: bytes = b""


def tenc_box(t: Tenc) -> bytes:
    """Serialise ``t``: version 0 has no pattern byte; the constant IV is written only for a
    protected track with per-sample IV size 0."""
    if len(t.kid) != 16:
        raise ValueError(f"a KID is 16 bytes, not {len(t.kid)}")
    pattern = ((t.crypt_byte_block & 0xF) << 4) | (t.skip_byte_block & 0xF) if t.version >= 1 else 0
    body = struct.pack(">BBBB", 0, pattern, t.is_protected, t.per_sample_iv_size) + t.kid
    if t.is_protected == 1 and t.per_sample_iv_size == 0:
        if len(t.constant_iv) not in (8, 16):
            raise ValueError("a constant IV of 8 or 16 bytes is needed when samples carry none")
        body += bytes([len(t.constant_iv)]) + t.constant_iv
    return full_box(b"tenc", t.version, 0, body)


def parse_tenc(buf: bytes | memoryview, h: BoxHeader) -> Tenc:
    """Parse the ``tenc`` box whose header is ``h``."""
    r = ByteReader.of(buf, h)
    version, _flags = r.full_header()
    r.u8()
    pattern = r.u8()
    is_protected, iv_size = r.u8(), r.u8()
    if iv_size not in (0, 8, 16):
        raise MalformedMedia(f"tenc: per-sample IV size {iv_size} (0, 8 or 16)")
    kid = r.bytes(16)
    constant_iv = b""
    if is_protected == 1 and iv_size == 0:
        n = r.u8()
        if n not in (8, 16):
            raise MalformedMedia(f"tenc: constant IV size {n} (8 or 16)")
        constant_iv = r.bytes(n)
    crypt, skip = (pattern >> 4, pattern & 0xF) if version >= 1 else (0, 0)
    return Tenc(version, is_protected, iv_size, kid, crypt, skip, constant_iv)


@dataclass(frozen=True, slots=True)
class Sinf:
    """A Protection Scheme Information box: the original format, the scheme and its ``tenc``."""

    original_format: bytes
    scheme: str
    scheme_version: int
    tenc: Tenc


def sinf_box(original_format: bytes, scheme: str, tenc: Tenc) -> bytes:
    """``sinf`` holding ``frma`` (``original_format``), ``schm`` (``scheme``, version 1.0) and
    ``schi``/``tenc``."""
    if len(original_format) != 4:
        raise ValueError(f"original format must be a four-character code: {original_format!r}")
    return box(b"sinf",
               box(b"frma", original_format),
               full_box(b"schm", 0, 0, scheme.encode("ascii"), struct.pack(">I", SCHEME_VERSION)),
               box(b"schi", tenc_box(tenc)))


def parse_sinf(buf: bytes | memoryview, h: BoxHeader) -> Sinf:
    """Parse the ``sinf`` box whose header is ``h``; ``frma``, ``schm`` and ``schi/tenc`` are
    all required."""
    frma = find_box(buf, b"frma", h.payload_start, h.end)
    schm = find_box(buf, b"schm", h.payload_start, h.end)
    schi = find_box(buf, b"schi", h.payload_start, h.end)
    if frma is None or schm is None or schi is None:
        raise MalformedMedia("sinf: frma, schm and schi are all required")
    tenc = find_box(buf, b"tenc", schi.payload_start, schi.end)
    if tenc is None:
        raise MalformedMedia("sinf: schi has no tenc")
    original = ByteReader.of(buf, frma).bytes(4)
    r = ByteReader.of(buf, schm)
    r.full_header()
    scheme = r.bytes(4).decode("latin-1")
    return Sinf(original, scheme, r.u32(), parse_tenc(buf, tenc))


def protect_sample_entry(entry_box: bytes, scheme: str, tenc: Tenc) -> bytes:
    """The sample entry ``entry_box`` (``avc1``/``avc3``/``hvc1``/``hev1``/``vp09``/``mp4a``/``Opus``, a whole box)
    turned into ``encv``/``enca``: same fields and children, a ``sinf`` appended, the size
    rewritten. Refuses other types and audio entries of version 1 or 2 (QuickTime's layouts,
    whose extra fields come before the children)."""
    h = parse_header(entry_box, 0)
    if h.end != len(entry_box):
        raise MalformedMedia(f"sample entry {h.name}: {len(entry_box) - h.end} bytes after the box")
    new_type = ENCRYPTED_ENTRY.get(h.type)
    if new_type is None:
        raise UnsupportedMedia(f"sample entry {h.name} cannot be protected (avc1, avc3, hvc1, "
                               f"hev1, vp09, mp4a or Opus)")
    fields = VISUAL_ENTRY_FIELDS if new_type == b"encv" else AUDIO_ENTRY_FIELDS
    if h.payload_size < fields:
        raise MalformedMedia(f"sample entry {h.name}: {h.payload_size} bytes, fewer than its "
                             f"{fields} bytes of fields")
    if new_type == b"enca":
        (version,) = struct.unpack_from(">H", entry_box, h.payload_start + 8)
        if version != 0:
            raise UnsupportedMedia(f"audio sample entry version {version} (only 0)")
    # The children must frame exactly; a sinf already there means it is protected already.
    for child in iter_boxes(entry_box, h.payload_start + fields, h.end):
        if child.type == b"sinf":
            raise UnsupportedMedia(f"sample entry {h.name} already has a sinf")
    return box(new_type, entry_box[h.payload_start:h.end], sinf_box(h.type, scheme, tenc))


# --- pssh --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Pssh:
    """A Protection System Specific Header: the ``system_id`` (16 bytes), the KIDs it names
    (version 1 only) and the system's opaque ``data``."""

    system_id: bytes
    kids: tuple[bytes, ...] = ()
    data: bytes = b""
    version: int = 1


def pssh_box(p: Pssh) -> bytes:
    """Serialise ``p``: any system id (Widevine's, PlayReady's data pass through untouched);
    version 0 cannot list KIDs."""
    if len(p.system_id) != 16:
        raise ValueError(f"a system id is 16 bytes, not {len(p.system_id)}")
    if p.version not in (0, 1):
        raise ValueError(f"pssh version {p.version} (0 or 1)")
    if p.version == 0 and p.kids:
        raise ValueError("a version-0 pssh cannot list KIDs")
    parts = [p.system_id]
    if p.version == 1:
        if any(len(k) != 16 for k in p.kids):
            raise ValueError("KIDs are 16 bytes")
        parts += [struct.pack(">I", len(p.kids)), *p.kids]
    parts += [struct.pack(">I", len(p.data)), p.data]
    return full_box(b"pssh", p.version, 0, *parts)


def parse_pssh(buf: bytes | memoryview, h: BoxHeader) -> Pssh:
    """Parse the ``pssh`` box whose header is ``h``."""
    r = ByteReader.of(buf, h)
    version, _flags = r.full_header()
    if version > 1:
        raise UnsupportedMedia(f"pssh version {version}")
    system_id = r.bytes(16)
    kids: tuple[bytes, ...] = ()
    if version == 1:
        n = r.count(r.u32(), 16)
        kids = tuple(r.bytes(16) for _ in range(n))
    data = r.bytes(r.count(r.u32(), 1))
    return Pssh(system_id, kids, data, version)


# --- senc / saiz / saio ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Senc:
    """A Sample Encryption box: per sample its IV (``iv_size`` bytes, possibly 0) and, when
    ``flags`` has 0x2, its subsample table."""

    flags: int
    samples: tuple[SampleAux, ...]


def _aux_size(a: SampleAux, iv_size: int, with_subsamples: bool) -> int:
    return iv_size + (2 + 6 * len(a.subsamples) if with_subsamples else 0)


def senc_box(aux: list[SampleAux], iv_size: int) -> bytes:
    """``senc`` for ``aux``: each sample's first ``iv_size`` IV bytes (0 for a constant IV), and
    the subsample tables (flag 0x2) if any sample has subsamples."""
    with_subsamples = any(a.subsamples for a in aux)
    parts = [struct.pack(">I", len(aux))]
    for a in aux:
        if iv_size:
            if len(a.iv) != iv_size:
                raise ValueError(f"sample IV of {len(a.iv)} bytes, track IV size {iv_size}")
            parts.append(a.iv)
        if with_subsamples:
            parts.append(struct.pack(">H", len(a.subsamples)))
            parts += [struct.pack(">HI", s.clear, s.protected) for s in a.subsamples]
    return full_box(b"senc", 0, 0x2 if with_subsamples else 0, *parts)


def parse_senc(buf: bytes | memoryview, h: BoxHeader, iv_size: int, constant_iv: bytes = b"") -> Senc:
    """Parse the ``senc`` box whose header is ``h``, samples carrying ``iv_size`` IV bytes (from
    the track's ``tenc``); with ``iv_size`` 0 each :class:`SampleAux` gets ``constant_iv``."""
    if iv_size not in (0, 8, 16):
        raise ValueError(f"IV size {iv_size}")
    r = ByteReader.of(buf, h)
    _version, flags = r.full_header()
    n = r.count(r.u32(), iv_size + (2 if flags & 0x2 else 0))
    samples = []
    for _ in range(n):
        iv = r.bytes(iv_size) if iv_size else constant_iv
        subs: tuple[Subsample, ...] = ()
        if flags & 0x2:
            k = r.count(r.u16(), 6)
            subs = tuple(Subsample(r.u16(), r.u32()) for _ in range(k))
        samples.append(SampleAux(iv, subs))
    if r.remaining:
        raise MalformedMedia(f"senc: {r.remaining} bytes after its {n} samples")
    return Senc(flags, tuple(samples))


@dataclass(frozen=True, slots=True)
class Saiz:
    """Sample Auxiliary Information Sizes: one size per sample (expanded from the default)."""

    sizes: tuple[int, ...]
    aux_info_type: bytes | None = None


def saiz_box(sizes: list[int]) -> bytes:
    """``saiz`` for ``sizes`` (each ≤ 255): a default size when they are all equal and not 0
    (a default of 0 announces a table), else a table."""
    if any(not 0 <= s <= MAX_AUX_SIZE for s in sizes):
        raise UnsupportedMedia(f"sample auxiliary information over {MAX_AUX_SIZE} bytes "
                               f"(too many subsamples in one sample)")
    if sizes and sizes[0] and all(s == sizes[0] for s in sizes):
        return full_box(b"saiz", 0, 0, struct.pack(">BI", sizes[0], len(sizes)))
    return full_box(b"saiz", 0, 0, struct.pack(">BI", 0, len(sizes)), bytes(sizes))


def parse_saiz(buf: bytes | memoryview, h: BoxHeader) -> Saiz:
    """Parse the ``saiz`` box whose header is ``h``."""
    r = ByteReader.of(buf, h)
    _version, flags = r.full_header()
    aux_type = None
    if flags & 1:
        aux_type = r.bytes(4)
        r.u32()
    default = r.u8()
    n = r.u32()
    if default:
        if n > 1 << 24:
            raise MalformedMedia(f"saiz: {n} samples")
        return Saiz((default,) * n, aux_type)
    r.count(n, 1)
    return Saiz(tuple(r.bytes(n)), aux_type)


@dataclass(frozen=True, slots=True)
class Saio:
    """Sample Auxiliary Information Offsets (a fragment's is one offset, ``moof``-relative)."""

    offsets: tuple[int, ...]
    aux_info_type: bytes | None = None


def saio_box(offset: int) -> bytes:
    """``saio`` with one offset (32-bit, version 0)."""
    return full_box(b"saio", 0, 0, struct.pack(">II", 1, offset))


def parse_saio(buf: bytes | memoryview, h: BoxHeader) -> Saio:
    """Parse the ``saio`` box whose header is ``h`` (32- or 64-bit offsets)."""
    r = ByteReader.of(buf, h)
    version, flags = r.full_header()
    aux_type = None
    if flags & 1:
        aux_type = r.bytes(4)
        r.u32()
    width = 8 if version else 4
    n = r.count(r.u32(), width)
    return Saio(tuple(r.u64() if version else r.u32() for _ in range(n)), aux_type)


_SAIZ_FIXED = 12 + 5           # box + full header, default size, sample count
_SAIO_SIZE = 12 + 8            # box + full header, entry count, one 32-bit offset
_SENC_PREFIX = 12 + 4          # box + full header, sample count


def aux_boxes(aux: list[SampleAux], scheme: str, at: int) -> bytes:
    """``saiz``, ``saio`` and ``senc`` for one ``traf``, in that order, for boxes that will
    start at ``moof``-relative offset ``at``: ``saio`` points at the first sample's entry in
    ``senc`` (its IV, or its subsample count when samples carry no IV, as ``cbcs`` does).
    When no sample has any auxiliary information (``cbcs`` audio) only ``senc`` is written."""
    iv_size = per_sample_iv_size(scheme, len(aux[0].iv)) if aux else 0
    with_subsamples = any(a.subsamples for a in aux)
    sizes = [_aux_size(a, iv_size, with_subsamples) for a in aux]
    senc = senc_box(aux, iv_size)
    if not any(sizes):
        # Nothing per sample (cbcs audio: constant IV, no subsamples): no saiz/saio to point
        # at it, only the senc with its sample count, as Shaka Packager writes it.
        return senc
    saiz = saiz_box(sizes)
    offset = at + len(saiz) + _SAIO_SIZE + _SENC_PREFIX
    if offset > 0xFFFFFFFF:
        raise ValueError(f"saio offset {offset} does not fit 32 bits")
    return saiz + saio_box(offset) + senc
