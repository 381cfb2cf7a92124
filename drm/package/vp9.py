"""Which bytes of a VP9 sample stay clear under Common Encryption. Sans-IO.

The VP Codec ISO Media File Format Binding (v1.0, "Common Encryption") says:

* VP9 samples are subsample-encrypted, and each frame's *uncompressed header* is clear (a
  decoder reads it, and a player's demuxer reads it for the frame size, before any decryption);
* a sample may be a *superframe*: several frames (hidden alt-ref frames, then the shown one)
  followed by an index naming their sizes (VP9 bitstream spec, Annex B). Every frame's
  uncompressed header and the index are clear;
* the encrypted bytes of each frame are block aligned (a multiple of 16), so that the CTR
  counter state at the start of each frame can be computed. The binding's text makes the
  alignment by growing the clear bytes before the protected range; Shaka Packager 3.8 instead
  starts the protected range right after the header and leaves the frame's last ``(n - h) % 16``
  bytes clear, as CMAF has ``cbcs`` do for H.264 and HEVC (protection from the first byte after
  the slice header). Every decrypter follows the map it is given, so both play; we write
  Shaka's layout, byte for byte (the tests compare), for ``cenc`` and ``cbcs`` alike.

So a frame of ``n`` bytes whose uncompressed header is ``h`` bytes gives ``h`` clear bytes,
``(n - h) - (n - h) % 16`` protected, then ``(n - h) % 16`` clear; clear runs are merged with
the clear bytes that follow them (the next frame's header, the superframe index) into one
subsample, a run with nothing protected after it (a ``show_existing_frame`` frame, a frame
under 16 bytes past its header, the trailing bytes, the index) ending the map as an all-clear
subsample. Clear counts over 65535 are split (``senc`` counts them in 16 bits).

Finding ``h`` means parsing the whole uncompressed header (its length depends on the loop
filter deltas, segmentation and tile fields, and the tile fields depend on the frame width).
An inter frame may take its size from one of the eight reference slots, so the parser keeps
the slots' sizes from frame to frame: :class:`Vp9HeaderReader` is one per track, fed every
sample in decode order. Input is hostile: every read is bounds-checked and a frame whose
header does not parse is :class:`~headwater.drm.errors.MalformedMedia`.
"""

from __future__ import annotations

from dataclasses import dataclass

from headwater.drm.bmff.protection import MAX_CLEAR, Subsample
from headwater.drm.errors import MalformedMedia

__all__ = ["Vp9Frame", "Vp9HeaderReader", "split_superframe", "vp9_subsamples", "BLOCK"]

BLOCK = 16
_SYNC_CODE = 0x498342
_REF_SLOTS = 8
_SRGB = 7
#: Bits of each segmentation feature's value (quantizer, loop filter, reference, skip) and
#: whether a sign bit follows it (VP9 spec §6.2.11).
_SEG_FEATURE_BITS = (8, 6, 2, 0)
_SEG_FEATURE_SIGNED = (True, True, False, False)


@dataclass(frozen=True, slots=True)
class Vp9Frame:
    """One frame of a sample: its ``size`` in bytes and the bytes of its uncompressed header
    (the whole frame for ``show_existing_frame``), and the picture size it decodes to."""

    size: int
    header_size: int
    width: int
    height: int
    keyframe: bool


def split_superframe(sample: bytes | memoryview) -> tuple[list[int], int]:
    """(frame sizes, index size) of ``sample``: a superframe's frames and the bytes of its
    index, or ``([len(sample)], 0)`` for a lone frame. The index is the last byte's marker
    (``0b110`` + size bytes + frame count), the frame sizes, and the marker again first; when
    both markers are there the sizes must add up to the sample exactly."""
    n = len(sample)
    if n == 0:
        raise MalformedMedia("an empty VP9 sample")
    marker = sample[-1]
    if marker & 0xE0 != 0xC0:
        return [n], 0
    frames = (marker & 0x07) + 1
    size_bytes = ((marker >> 3) & 0x03) + 1
    index = 2 + frames * size_bytes
    if n < index or sample[n - index] != marker:
        # A last byte that only looks like a marker, without the index's first marker to match:
        # a lone frame, as libvpx's decoder reads it (its encoder pads such frames, but others
        # need not).
        return [n], 0
    sizes = []
    at = n - index + 1
    for _ in range(frames):
        sizes.append(int.from_bytes(bytes(sample[at:at + size_bytes]), "little"))
        at += size_bytes
    if sum(sizes) + index != n or 0 in sizes:
        raise MalformedMedia(f"VP9 superframe index: frames of {sizes} bytes and a {index}-byte index "
                             f"in a {n}-byte sample")
    return sizes, index


class _Bits:
    """A big-endian bit reader over one frame; reading past its end is MalformedMedia."""

    __slots__ = ("data", "pos", "limit")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self.pos = 0
        self.limit = 8 * len(data)

    def f(self, n: int) -> int:
        if self.pos + n > self.limit:
            raise MalformedMedia("VP9 uncompressed header runs past the end of its frame")
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def maybe(self, n: int) -> None:
        """A flag, and ``n`` more bits when it is set (``delta_coded``, ``prob_coded``…)."""
        if self.f(1):
            self.f(n)


class Vp9HeaderReader:
    """Reads each frame's uncompressed header (VP9 spec §6.2) for its size in bytes, keeping
    the reference slots' frame sizes and the stream's profile between frames. One per track."""

    def __init__(self) -> None:
        self.ref_sizes: list[tuple[int, int]] = [(0, 0)] * _REF_SLOTS
        self.width = self.height = 0

    def subsamples(self, sample: bytes | memoryview) -> tuple[Subsample, ...]:
        """The subsample map of one sample (the next in decode order)."""
        frames = self.frames(sample)
        return vp9_subsamples(frames, len(sample) - sum(f.size for f in frames))

    def frames(self, sample: bytes | memoryview) -> list[Vp9Frame]:
        """The frames of one sample (the next in decode order), in order."""
        sizes, _index = split_superframe(sample)
        view = memoryview(sample) if not isinstance(sample, memoryview) else sample
        out = []
        at = 0
        for size in sizes:
            out.append(self.frame(view[at:at + size]))
            at += size
        return out

    def frame(self, data: bytes | memoryview) -> Vp9Frame:
        """One frame's header."""
        b = _Bits(data)
        if b.f(2) != 2:
            raise MalformedMedia("VP9 frame without its frame marker")
        profile = b.f(1) | (b.f(1) << 1)
        if profile == 3 and b.f(1):
            raise MalformedMedia("VP9 profile 3 reserved bit set")
        if b.f(1):                                   # show_existing_frame
            b.f(3)                                   # frame_to_show_map_idx
            return Vp9Frame(len(data), len(data), self.width, self.height, False)
        keyframe = b.f(1) == 0                       # frame_type 0 is KEY_FRAME
        show_frame = b.f(1)
        error_resilient = b.f(1)
        if keyframe:
            self._sync_code(b)
            self._color_config(b, profile)
            self._frame_size(b)
            self._render_size(b)
            refresh = 0xFF
        else:
            intra_only = b.f(1) if not show_frame else 0
            if not error_resilient:
                b.f(2)                               # reset_frame_context
            if intra_only:
                self._sync_code(b)
                if profile > 0:
                    self._color_config(b, profile)
                refresh = b.f(8)
                self._frame_size(b)
                self._render_size(b)
            else:
                refresh = b.f(8)
                refs = []
                for _ in range(3):
                    refs.append(b.f(3))              # ref_frame_idx
                    b.f(1)                           # ref_frame_sign_bias
                found = False
                for idx in refs:                     # frame_size_with_refs
                    if b.f(1):
                        self.width, self.height = self.ref_sizes[idx]
                        found = True
                        break
                if not found:
                    self._frame_size(b)
                elif self.width == 0:
                    raise MalformedMedia("VP9 inter frame sized from a reference no frame set")
                self._render_size(b)
                b.f(1)                               # allow_high_precision_mv
                if not b.f(1):                       # is_filter_switchable
                    b.f(2)                           # raw_interpolation_filter
        if not error_resilient:
            b.f(2)                                   # refresh_frame_context, frame_parallel_decoding_mode
        b.f(2)                                       # frame_context_idx
        self._loop_filter(b)
        b.f(8)                                       # base_q_idx
        for _ in range(3):
            b.maybe(4 + 1)                           # delta_q_y_dc, delta_q_uv_dc, delta_q_uv_ac: su(4)
        self._segmentation(b)
        self._tile_info(b)
        if b.f(16) == 0:                             # header_size_in_bytes (the compressed header)
            raise MalformedMedia("VP9 frame with an empty compressed header")
        header = (b.pos + 7) // 8                    # trailing_bits to the byte boundary
        for slot in range(_REF_SLOTS):
            if refresh >> (7 - slot) & 1:
                self.ref_sizes[slot] = (self.width, self.height)
        return Vp9Frame(len(data), header, self.width, self.height, keyframe)

    @staticmethod
    def _sync_code(b: _Bits) -> None:
        if b.f(24) != _SYNC_CODE:
            raise MalformedMedia("VP9 frame with a wrong sync code")

    @staticmethod
    def _color_config(b: _Bits, profile: int) -> None:
        if profile >= 2:
            b.f(1)                                   # ten_or_twelve_bit
        color_space = b.f(3)
        if color_space != _SRGB:
            b.f(1)                                   # color_range
            if profile in (1, 3):
                b.f(3)                               # subsampling_x, subsampling_y, reserved_zero
        elif profile in (1, 3):
            b.f(1)                                   # reserved_zero
        else:
            raise MalformedMedia("VP9 sRGB (4:4:4) in profile 0 or 2")

    def _frame_size(self, b: _Bits) -> None:
        self.width, self.height = b.f(16) + 1, b.f(16) + 1

    @staticmethod
    def _render_size(b: _Bits) -> None:
        if b.f(1):                                   # render_and_frame_size_different
            b.f(32)

    @staticmethod
    def _loop_filter(b: _Bits) -> None:
        b.f(6 + 3)                                   # loop_filter_level, loop_filter_sharpness
        if b.f(1) and b.f(1):                        # delta_enabled, delta_update
            for _ in range(4 + 2):                   # ref deltas, mode deltas: su(6)
                b.maybe(6 + 1)

    @staticmethod
    def _segmentation(b: _Bits) -> None:
        if not b.f(1):                               # segmentation_enabled
            return
        if b.f(1):                                   # segmentation_update_map
            for _ in range(7):
                b.maybe(8)                           # tree probs
            if b.f(1):                               # segmentation_temporal_update
                for _ in range(3):
                    b.maybe(8)                       # pred probs
        if b.f(1):                                   # segmentation_update_data
            b.f(1)                                   # segmentation_abs_or_delta_update
            for _ in range(8):
                for bits, signed in zip(_SEG_FEATURE_BITS, _SEG_FEATURE_SIGNED):
                    if b.f(1):                       # feature_enabled
                        b.f(bits + (1 if signed else 0))

    def _tile_info(self, b: _Bits) -> None:
        sb64_cols = ((self.width + 7) // 8 + 7) // 8  # MiCols, then 64x64 superblocks
        min_log2 = 0
        while (64 << min_log2) < sb64_cols:
            min_log2 += 1
        max_log2 = 1
        while (sb64_cols >> max_log2) >= 4:
            max_log2 += 1
        max_log2 -= 1
        log2 = min_log2
        while log2 < max_log2:
            if not b.f(1):                           # increment_tile_cols_log2
                break
            log2 += 1
        if b.f(1):                                   # tile_rows_log2
            b.f(1)


def vp9_subsamples(frames: list[Vp9Frame], index_size: int) -> tuple[Subsample, ...]:
    """The subsample map of a sample made of ``frames`` and a superframe index of
    ``index_size`` bytes (0 for a lone frame), per the binding's rules (module docstring)."""
    out: list[Subsample] = []
    clear = 0

    def push(clear: int, protected: int) -> None:
        while clear > MAX_CLEAR:
            out.append(Subsample(MAX_CLEAR, 0))
            clear -= MAX_CLEAR
        out.append(Subsample(clear, protected))

    for fr in frames:
        body = fr.size - fr.header_size
        protected = body - body % BLOCK
        clear += fr.header_size
        if protected:
            push(clear, protected)
            clear = 0
        clear += body - protected
    clear += index_size
    if clear:
        push(clear, 0)
    return tuple(out)
