"""NAL units of length-prefixed AVC and HEVC samples, and which of their bytes stay clear. Sans-IO.

An MP4 video sample is a run of NAL units, each behind a big-endian length of
``nal_length_size`` bytes (1, 2 or 4, from ``avcC``/``hvcC``). Subsample encryption
(ISO/IEC 23001-7 §9.5 and the AVC/HEVC clauses of its NAL-structured-video section) leaves
clear everything a demuxer and a decoder's parser need before decryption:

* non-VCL NAL units (parameter sets, SEI, AUD, end of sequence…) entirely;
* of each VCL NAL unit (a coded slice): its length prefix, its NAL unit header (1 byte for
  AVC, 2 for HEVC) and, given a :class:`~headwater.drm.package.slice_header.SliceHeaderReader`,
  its slice header — CMAF requires that for ``cbcs`` (the protected range starts at the first
  byte of slice data) and Shaka Packager does it for both schemes.

Then per scheme:

* ``cenc``: the protected range is a whole number of 16-byte blocks, so the counter stream
  stays block-aligned from one subsample to the next as CMAF requires; the bytes over a
  multiple of 16 stay clear at the *end* of the NAL unit, so the protected range still starts
  at the slice data (Shaka Packager 3.8 does the same; putting them at the front would be as
  valid for 23001-7, but would move the start off the slice data).
* ``cbcs``: the protected range runs from the slice data to the end of the NAL unit; the 1:9
  pattern (and the rule that a trailing partial block is never encrypted) decides which of its
  bytes are actually enciphered.

Without a slice-header reader only the NAL header stays clear: still valid ``cenc``/``cbcs``
for any decryptor (decryption only follows the map), but not CMAF's ``cbcs`` layout.

A NAL unit's length past the end of the sample is :class:`MalformedMedia`; nothing is read
outside the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

from headwater.drm.bmff.protection import MAX_CLEAR, Subsample
from headwater.drm.errors import MalformedMedia, UnsupportedMedia
from headwater.drm.package.slice_header import SliceHeaderReader

__all__ = [
    "NalUnit", "split_nal_units", "subsamples_for", "merge_ranges", "nal_length_size_of",
    "NAL_HEADER_SIZE",
]

#: NAL unit header bytes per codec (H.264 §7.3.1; H.265 §7.3.1.2).
NAL_HEADER_SIZE = {"avc": 1, "hevc": 2}


@dataclass(frozen=True, slots=True)
class NalUnit:
    """One NAL unit in a sample: ``start`` is the offset of its length prefix, ``size`` the
    NAL unit's own length (after the prefix), ``nal_type`` its type and ``vcl`` whether it
    carries slice data."""

    start: int
    size: int
    nal_type: int
    vcl: bool


def nal_length_size_of(config_box_payload: bytes, codec: str) -> int:
    """The NAL length size (1, 2 or 4) from an ``avcC`` or ``hvcC`` payload (the box's bytes
    after its 8-byte header): lengthSizeMinusOne is the low 2 bits of byte 4 (AVC) or 21 (HEVC)."""
    at = {"avc": 4, "hevc": 21}[codec]
    if len(config_box_payload) <= at:
        raise MalformedMedia(f"{'avcC' if codec == 'avc' else 'hvcC'}: {len(config_box_payload)} "
                             f"bytes, too short for lengthSizeMinusOne")
    n = (config_box_payload[at] & 0x3) + 1
    if n == 3:
        raise MalformedMedia("NAL length size 3 is not allowed")
    return n


def _nal_type(first: int, second_present: bool, codec: str) -> tuple[int, bool]:
    if codec == "avc":
        t = first & 0x1F
        return t, 1 <= t <= 5            # coded slices (non-IDR, partitions A-C, IDR)
    if codec == "hevc":
        t = (first >> 1) & 0x3F
        return t, t <= 31 and second_present   # VCL types 0-31 (reserved VCL types included)
    raise UnsupportedMedia(f"codec {codec!r} has no NAL units (avc or hevc)")


def split_nal_units(sample: bytes | memoryview, nal_length_size: int, codec: str) -> list[NalUnit]:
    """The NAL units of a length-prefixed ``sample``. Raises :class:`MalformedMedia` when a
    length runs past the sample's end or a prefix is cut short."""
    if nal_length_size not in (1, 2, 4):
        raise UnsupportedMedia(f"NAL length size {nal_length_size} (1, 2 or 4)")
    if codec not in NAL_HEADER_SIZE:
        raise UnsupportedMedia(f"codec {codec!r} has no NAL units (avc or hevc)")
    end = len(sample)
    units = []
    at = 0
    while at < end:
        if at + nal_length_size > end:
            raise MalformedMedia(f"NAL length prefix cut short at offset {at} of a {end}-byte sample")
        size = int.from_bytes(sample[at:at + nal_length_size], "big")
        body = at + nal_length_size
        if size > end - body:
            raise MalformedMedia(f"NAL unit at offset {at} claims {size} bytes, only "
                                 f"{end - body} left in the sample")
        if size:
            t, vcl = _nal_type(sample[body], size >= 2, codec)
        else:
            t, vcl = -1, False
        units.append(NalUnit(at, size, t, vcl))
        at = body + size
    return units


def merge_ranges(ranges: list[tuple[int, int]]) -> tuple[Subsample, ...]:
    """Subsamples from (clear, protected) runs in order: adjacent clear runs are merged into the
    next protected run, a clear run over 65535 bytes becomes several all-clear subsamples, and
    trailing clear bytes end the table with a subsample of no protected bytes."""
    out: list[Subsample] = []
    clear = 0
    for c, p in ranges:
        clear += c
        if p == 0:
            continue
        while clear > MAX_CLEAR:
            out.append(Subsample(MAX_CLEAR, 0))
            clear -= MAX_CLEAR
        out.append(Subsample(clear, p))
        clear = 0
    while clear > MAX_CLEAR:
        out.append(Subsample(MAX_CLEAR, 0))
        clear -= MAX_CLEAR
    if clear:
        out.append(Subsample(clear, 0))
    return tuple(out)


def subsamples_for(sample: bytes | memoryview, nal_length_size: int, codec: str,
                   scheme: str, slice_headers: SliceHeaderReader | None = None) -> tuple[Subsample, ...]:
    """The subsample map of a video ``sample`` under ``scheme`` (``cenc`` or ``cbcs``): the
    clear and protected runs per NAL unit as the module's docstring sets out, merged. With
    ``slice_headers`` slice headers stay clear too, and the sample's parameter sets update it."""
    if scheme not in ("cenc", "cbcs"):
        raise UnsupportedMedia(f"protection scheme {scheme!r} (only cenc and cbcs)")
    header = NAL_HEADER_SIZE.get(codec)
    if header is None:
        raise UnsupportedMedia(f"codec {codec!r} has no NAL units (avc or hevc)")
    ranges: list[tuple[int, int]] = []
    view = memoryview(sample)
    for u in split_nal_units(sample, nal_length_size, codec):
        whole = nal_length_size + u.size
        body = view[u.start + nal_length_size:u.start + whole]
        if not u.vcl or u.size <= header:
            if slice_headers is not None and u.size:
                slice_headers.observe(body)
            ranges.append((whole, 0))
            continue
        lead = nal_length_size + header
        if slice_headers is not None:
            lead += slice_headers.header_size(body)
        protected = whole - lead
        tail = protected % 16 if scheme == "cenc" else 0
        ranges.append((lead, protected - tail))
        ranges.append((tail, 0))
    return merge_ranges(ranges)
