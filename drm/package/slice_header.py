"""Slice-header lengths of H.264 and H.265 coded slices, so subsample encryption can leave them
clear. Sans-IO.

CMAF (ISO/IEC 23000-19) asks that a ``cbcs`` protected range start at the first byte of slice
data, after the slice header, and Shaka Packager does the same for ``cenc``: a player that
must parse slice headers before decrypting (hardware pipelines do) can then. A slice header's
length depends on the sequence and picture parameter sets it refers to, so
:class:`SliceHeaderReader` keeps the SPS/PPS of a track (from ``avcC``/``hvcC`` and from
in-band parameter-set NAL units, in stream order) and parses each slice header just far
enough to know where it ends: H.264 §7.3.3, H.265 §7.3.6.1 (with the short-term reference
picture sets of §7.3.7 and the weighted-prediction tables they imply).

The length counts the bytes of the NAL unit as stored (emulation-prevention bytes included),
rounded up to a whole byte, the way Shaka Packager counts it, so the maps agree byte for byte.
Every read is bounded by the NAL unit; a header that runs past it, or names a parameter set
that was never seen, is :class:`MalformedMedia`. Slice groups (H.264 FMO, Baseline only) and
H.265 screen-content extensions are refused (:class:`UnsupportedMedia`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headwater.drm.errors import MalformedMedia, UnsupportedMedia
from headwater.drm.package.rbsp import BitReader, RanOut, ceil_log2, header_bytes, unescape

__all__ = ["SliceHeaderReader", "parameter_sets_of"]


#: Memory-management operations in one H.264 slice header (each frees or marks one picture
#: of at most 16 references, per field: far fewer in practice).
_MAX_MMCO = 66
#: No real slice header comes near this (H.265 entry points for an 8K picture are ~2 KiB).
_MAX_SLICE_HEADER = 1 << 16


def parameter_sets_of(config: bytes, codec: str) -> list[bytes]:
    """The parameter-set NAL units listed in an ``avcC`` or ``hvcC`` payload."""
    out = []
    try:
        if codec == "avc":
            at = 5
            for mask in (0x1F, 0xFF):
                count = config[at] & mask
                at += 1
                for _ in range(count):
                    n = int.from_bytes(config[at:at + 2], "big")
                    if at + 2 + n > len(config):
                        raise MalformedMedia("avcC: parameter set runs past the box")
                    out.append(bytes(config[at + 2:at + 2 + n]))
                    at += 2 + n
        else:
            at = 22
            arrays = config[at]
            at += 1
            for _ in range(arrays):
                count = int.from_bytes(config[at + 1:at + 3], "big")
                at += 3
                for _ in range(count):
                    n = int.from_bytes(config[at:at + 2], "big")
                    if at + 2 + n > len(config):
                        raise MalformedMedia("hvcC: parameter set runs past the box")
                    out.append(bytes(config[at + 2:at + 2 + n]))
                    at += 2 + n
    except IndexError:
        raise MalformedMedia(f"{'avcC' if codec == 'avc' else 'hvcC'} truncated") from None
    return out


# --- H.264 -------------------------------------------------------------------------------------

_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


@dataclass(frozen=True, slots=True)
class _AvcSps:
    chroma_array_type: int
    separate_colour_plane: bool
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int
    delta_pic_order_always_zero: bool
    frame_mbs_only: bool


@dataclass(frozen=True, slots=True)
class _AvcPps:
    sps_id: int
    cabac: bool
    bottom_field_pic_order_in_frame_present: bool
    num_ref_idx_l0_default: int
    num_ref_idx_l1_default: int
    weighted_pred: bool
    weighted_bipred_idc: int
    deblocking_filter_control_present: bool
    redundant_pic_cnt_present: bool


def _skip_scaling_list(b: BitReader, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + b.se() + 256) % 256
        last = nxt or last


def _avc_sps(b: BitReader) -> tuple[int, _AvcSps]:
    profile = b.u(8)
    b.u(16)
    sps_id = b.ue()
    chroma, separate = 1, False
    if profile in _HIGH_PROFILES:
        chroma = b.ue()
        if chroma == 3:
            separate = bool(b.u(1))
        b.ue()
        b.ue()
        b.u(1)
        if b.u(1):
            for i in range(8 if chroma != 3 else 12):
                if b.u(1):
                    _skip_scaling_list(b, 16 if i < 6 else 64)
    log2_max_frame_num = b.ue() + 4
    poc_type = b.ue()
    log2_max_poc_lsb, always_zero = 0, False
    if poc_type == 0:
        log2_max_poc_lsb = b.ue() + 4
    elif poc_type == 1:
        always_zero = bool(b.u(1))
        b.se()
        b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue()
    b.u(1)
    b.ue()
    b.ue()
    frame_mbs_only = bool(b.u(1))
    return sps_id, _AvcSps(0 if separate else chroma, separate, log2_max_frame_num, poc_type,
                           log2_max_poc_lsb, always_zero, frame_mbs_only)


def _avc_pps(b: BitReader) -> tuple[int, _AvcPps]:
    pps_id, sps_id = b.ue(), b.ue()
    cabac, bottom = bool(b.u(1)), bool(b.u(1))
    if b.ue() > 0:
        raise UnsupportedMedia("H.264 slice groups (FMO)")
    l0, l1 = b.ue() + 1, b.ue() + 1
    if l0 > 32 or l1 > 32:
        raise MalformedMedia("H.264 PPS with more than 32 default reference indices")
    weighted_pred, bipred = bool(b.u(1)), b.u(2)
    b.se()
    b.se()
    b.se()
    deblocking = bool(b.u(1))
    b.u(1)
    redundant = bool(b.u(1))
    return pps_id, _AvcPps(sps_id, cabac, bottom, l0, l1, weighted_pred, bipred, deblocking, redundant)


def _avc_pred_weight_table(b: BitReader, chroma: int, counts: tuple[int, ...]) -> None:
    b.ue()
    if chroma:
        b.ue()
    for n in counts:
        for _ in range(n):
            if b.u(1):
                b.se()
                b.se()
            if chroma and b.u(1):
                for _ in range(4):
                    b.se()


def _avc_slice(b: BitReader, nal_type: int, nal_ref_idc: int, spss: dict, ppss: dict) -> None:
    b.ue()
    slice_type = b.ue() % 5
    pps = ppss.get(b.ue())
    if pps is None or pps.sps_id not in spss:
        raise MalformedMedia("H.264 slice refers to a parameter set never seen")
    sps = spss[pps.sps_id]
    if sps.separate_colour_plane:
        b.u(2)
    b.u(sps.log2_max_frame_num)
    field_pic = False
    if not sps.frame_mbs_only:
        field_pic = bool(b.u(1))
        if field_pic:
            b.u(1)
    if nal_type == 5:
        b.ue()
    if sps.poc_type == 0:
        b.u(sps.log2_max_poc_lsb)
        if pps.bottom_field_pic_order_in_frame_present and not field_pic:
            b.se()
    if sps.poc_type == 1 and not sps.delta_pic_order_always_zero:
        b.se()
        if pps.bottom_field_pic_order_in_frame_present and not field_pic:
            b.se()
    if pps.redundant_pic_cnt_present:
        b.ue()
    is_b, is_p = slice_type == 1, slice_type in (0, 3)
    if is_b:
        b.u(1)
    l0, l1 = pps.num_ref_idx_l0_default, pps.num_ref_idx_l1_default
    if is_p or is_b:
        if b.u(1):
            l0 = b.ue() + 1
            if is_b:
                l1 = b.ue() + 1
    if l0 > 32 or l1 > 32:
        raise MalformedMedia("more than 32 reference indices in an H.264 slice")
    if slice_type not in (2, 4):                           # ref_pic_list_modification
        for n in ((l0, l1) if is_b else (l0,)):
            if b.u(1):
                for _ in range(n + 1):                     # at most one per index, then the end
                    idc = b.ue()
                    if idc == 3:
                        break
                    if idc > 5:
                        raise MalformedMedia(f"modification_of_pic_nums_idc {idc}")
                    b.ue()
                else:
                    raise MalformedMedia("H.264 reference list modification never ends")
    if (pps.weighted_pred and is_p) or (pps.weighted_bipred_idc == 1 and is_b):
        _avc_pred_weight_table(b, sps.chroma_array_type, (l0, l1) if is_b else (l0,))
    if nal_ref_idc:                                        # dec_ref_pic_marking
        if nal_type == 5:
            b.u(2)
        elif b.u(1):
            for _ in range(_MAX_MMCO):
                op = b.ue()
                if op == 0:
                    break
                if op > 6:
                    raise MalformedMedia(f"memory_management_control_operation {op}")
                if op in (1, 3):
                    b.ue()
                if op == 2:
                    b.ue()
                if op in (3, 6):
                    b.ue()
                if op == 4:
                    b.ue()
            else:
                raise MalformedMedia("H.264 memory management control never ends")
    if pps.cabac and slice_type not in (2, 4):
        b.ue()
    b.se()
    if slice_type in (3, 4):
        if slice_type == 3:
            b.u(1)
        b.se()
    if pps.deblocking_filter_control_present:
        if b.ue() != 1:
            b.se()
            b.se()


# --- H.265 -------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Rps:
    s0: list[tuple[int, bool]] = field(default_factory=list)   # (delta POC, used), negative
    s1: list[tuple[int, bool]] = field(default_factory=list)   # positive

    @property
    def used(self) -> int:
        return sum(u for _, u in self.s0) + sum(u for _, u in self.s1)


def _hevc_rps(b: BitReader, idx: int, sets: list[_Rps], in_slice: bool) -> _Rps:
    if idx and b.u(1):                                     # inter_ref_pic_set_prediction_flag
        delta_idx = b.ue() + 1 if in_slice else 1
        if delta_idx > idx:
            raise MalformedMedia("short-term RPS predicted from a set that does not exist")
        ref = sets[idx - delta_idx]
        sign = b.u(1)
        delta_rps = (1 - 2 * sign) * (b.ue() + 1)
        ref_pocs = [d for d, _ in ref.s0] + [d for d, _ in ref.s1]
        flags = []
        for _ in range(len(ref_pocs) + 1):
            used = bool(b.u(1))
            flags.append((used, used or bool(b.u(1))))
        # H.265 (7-61)/(7-62): the new set's pictures, from the reference set's shifted by deltaRps.
        cand = [(d + delta_rps, flags[j]) for j, d in enumerate(ref_pocs)]
        cand.append((delta_rps, flags[len(ref_pocs)]))
        rps = _Rps()
        for d, (used, keep) in cand:
            if keep and d < 0:
                rps.s0.append((d, used))
            elif keep and d > 0:
                rps.s1.append((d, used))
        rps.s0.sort(key=lambda t: -t[0])
        rps.s1.sort(key=lambda t: t[0])
        return rps
    rps = _Rps()
    neg, pos = b.ue(), b.ue()
    if neg > 16 or pos > 16:
        raise MalformedMedia("short-term RPS with more than 16 pictures")
    poc = 0
    for _ in range(neg):
        poc -= b.ue() + 1
        rps.s0.append((poc, bool(b.u(1))))
    poc = 0
    for _ in range(pos):
        poc += b.ue() + 1
        rps.s1.append((poc, bool(b.u(1))))
    return rps


def _hevc_scaling_list_data(b: BitReader) -> None:
    for size_id in range(4):
        for _ in range(0, 6, 3 if size_id == 3 else 1):
            if not b.u(1):
                b.ue()
            else:
                if size_id > 1:
                    b.se()
                for _ in range(min(64, 1 << (4 + (size_id << 1)))):
                    b.se()


@dataclass(frozen=True, slots=True)
class _HevcSps:
    chroma_array_type: int
    separate_colour_plane: bool
    log2_max_poc_lsb: int
    pic_size_in_ctbs: int
    sao: bool
    rps: tuple[_Rps, ...]
    long_term_present: bool
    lt_used: tuple[bool, ...]
    temporal_mvp: bool


@dataclass(frozen=True, slots=True)
class _HevcPps:
    sps_id: int
    dependent_slice_segments: bool
    output_flag_present: bool
    extra_slice_header_bits: int
    cabac_init_present: bool
    l0_default: int
    l1_default: int
    slice_chroma_qp_offsets_present: bool
    weighted_pred: bool
    weighted_bipred: bool
    tiles_or_wpp: bool
    loop_filter_across_slices: bool
    deblocking_override_enabled: bool
    deblocking_disabled: bool
    lists_modification_present: bool
    slice_header_extension_present: bool
    chroma_qp_offset_list_enabled: bool


def _hevc_sps(b: BitReader) -> tuple[int, _HevcSps]:
    b.u(4)
    sub_layers = b.u(3)
    b.u(1)
    b.u(96 - 32)                                           # general profile_tier_level
    b.u(32)
    present = [(b.u(1), b.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        for _ in range(sub_layers, 8):
            b.u(2)
    for profile, level in present:
        if profile:
            b.u(88 - 32)
            b.u(32)
        if level:
            b.u(8)
    sps_id = b.ue()
    chroma = b.ue()
    separate = bool(b.u(1)) if chroma == 3 else False
    width, height = b.ue(), b.ue()
    if b.u(1):
        for _ in range(4):
            b.ue()
    b.ue()
    b.ue()
    log2_max_poc_lsb = b.ue() + 4
    ordering = b.u(1)
    for _ in range(0 if ordering else sub_layers, sub_layers + 1):
        b.ue()
        b.ue()
        b.ue()
    log2_min_cb = b.ue() + 3
    log2_ctb = log2_min_cb + b.ue()
    for _ in range(4):
        b.ue()
    if b.u(1) and b.u(1):
        _hevc_scaling_list_data(b)
    b.u(1)
    sao = bool(b.u(1))
    if b.u(1):
        b.u(8)
        b.ue()
        b.ue()
        b.u(1)
    count = b.ue()
    if count > 64:
        raise MalformedMedia(f"{count} short-term RPS in an SPS (64 at most)")
    sets: list[_Rps] = []
    for i in range(count):
        sets.append(_hevc_rps(b, i, sets, False))
    lt_present = bool(b.u(1))
    lt_used = []
    if lt_present:
        n = b.ue()
        if n > 32:
            raise MalformedMedia(f"{n} long-term pictures in an SPS (32 at most)")
        for _ in range(n):
            b.u(log2_max_poc_lsb)
            lt_used.append(bool(b.u(1)))
    temporal_mvp = bool(b.u(1))
    ctb = 1 << log2_ctb
    pic_size = (-(-width // ctb)) * (-(-height // ctb))
    return sps_id, _HevcSps(0 if separate else chroma, separate, log2_max_poc_lsb, pic_size,
                            sao, tuple(sets), lt_present, tuple(lt_used), temporal_mvp)


def _hevc_pps(b: BitReader) -> tuple[int, _HevcPps]:
    pps_id, sps_id = b.ue(), b.ue()
    dependent, output_flag = bool(b.u(1)), bool(b.u(1))
    extra_bits = b.u(3)
    b.u(1)
    cabac_init = bool(b.u(1))
    l0, l1 = b.ue() + 1, b.ue() + 1
    if l0 > 15 or l1 > 15:
        raise MalformedMedia("H.265 PPS with more than 15 default reference indices")
    b.se()
    b.u(1)
    transform_skip = b.u(1)
    if b.u(1):
        b.ue()
    b.se()
    b.se()
    chroma_offsets = bool(b.u(1))
    weighted_pred, weighted_bipred = bool(b.u(1)), bool(b.u(1))
    b.u(1)
    tiles, wpp = b.u(1), b.u(1)
    if tiles:
        cols, rows = b.ue() + 1, b.ue() + 1
        if not b.u(1):
            for _ in range(cols - 1 + rows - 1):
                b.ue()
        b.u(1)
    across_slices = bool(b.u(1))
    override, disabled = False, False
    if b.u(1):
        override = bool(b.u(1))
        disabled = bool(b.u(1))
        if not disabled:
            b.se()
            b.se()
    if b.u(1):
        _hevc_scaling_list_data(b)
    lists_mod = bool(b.u(1))
    b.ue()
    extension = bool(b.u(1))
    chroma_qp_list = False
    if b.u(1):                                             # pps_extension_present_flag
        range_ext, _multilayer, _3d, scc = b.u(1), b.u(1), b.u(1), b.u(1)
        b.u(4)
        if scc:
            raise UnsupportedMedia("H.265 screen-content coding extensions")
        if range_ext:
            if transform_skip:
                b.ue()
            b.u(1)
            chroma_qp_list = bool(b.u(1))
    return pps_id, _HevcPps(sps_id, dependent, output_flag, extra_bits, cabac_init, l0, l1,
                            chroma_offsets, weighted_pred, weighted_bipred, bool(tiles or wpp),
                            across_slices, override, disabled, lists_mod, extension, chroma_qp_list)


def _hevc_slice(b: BitReader, nal_type: int, spss: dict, ppss: dict) -> None:
    first = b.u(1)
    if 16 <= nal_type <= 23:
        b.u(1)
    pps = ppss.get(b.ue())
    if pps is None or pps.sps_id not in spss:
        raise MalformedMedia("H.265 slice refers to a parameter set never seen")
    sps = spss[pps.sps_id]
    dependent = False
    if not first:
        if pps.dependent_slice_segments:
            dependent = bool(b.u(1))
        b.u(ceil_log2(sps.pic_size_in_ctbs))
    if not dependent:
        b.u(pps.extra_slice_header_bits)
        slice_type = b.ue()                                # 0 B, 1 P, 2 I
        if pps.output_flag_present:
            b.u(1)
        if sps.separate_colour_plane:
            b.u(2)
        total_curr = 0
        temporal_mvp = False
        if nal_type not in (19, 20):                       # not IDR
            b.u(sps.log2_max_poc_lsb)
            if not b.u(1):
                rps = _hevc_rps(b, len(sps.rps), list(sps.rps), True)
            else:
                idx = b.u(ceil_log2(len(sps.rps)))
                if idx >= len(sps.rps):
                    raise MalformedMedia("short_term_ref_pic_set_idx out of range")
                rps = sps.rps[idx]
            total_curr = rps.used
            if sps.long_term_present:
                n_sps = b.ue() if sps.lt_used else 0
                n_pics = b.ue()
                if n_sps > len(sps.lt_used) or n_sps + n_pics > 32:
                    raise MalformedMedia("too many long-term pictures in a slice")
                for i in range(n_sps + n_pics):
                    if i < n_sps:
                        k = b.u(ceil_log2(len(sps.lt_used))) if len(sps.lt_used) > 1 else 0
                        if k >= len(sps.lt_used):
                            raise MalformedMedia("lt_idx_sps out of range")
                        total_curr += sps.lt_used[k]
                    else:
                        b.u(sps.log2_max_poc_lsb)
                        total_curr += b.u(1)
                    if b.u(1):
                        b.ue()
            if sps.temporal_mvp:
                temporal_mvp = bool(b.u(1))
        sao_luma = sao_chroma = False
        if sps.sao:
            sao_luma = bool(b.u(1))
            if sps.chroma_array_type:
                sao_chroma = bool(b.u(1))
        if slice_type in (0, 1):
            l0, l1 = pps.l0_default, pps.l1_default if slice_type == 0 else 0
            if b.u(1):
                l0 = b.ue() + 1
                if slice_type == 0:
                    l1 = b.ue() + 1
            if l0 > 15 or l1 > 15:
                raise MalformedMedia("more than 15 reference indices in an H.265 slice")
            if pps.lists_modification_present and total_curr > 1:
                bits = ceil_log2(total_curr)
                for n in ((l0, l1) if slice_type == 0 else (l0,)):
                    if b.u(1):
                        for _ in range(n):
                            b.u(bits)
            if slice_type == 0:
                b.u(1)
            if pps.cabac_init_present:
                b.u(1)
            if temporal_mvp:
                from_l0 = b.u(1) if slice_type == 0 else 1
                if (from_l0 and l0 > 1) or (not from_l0 and l1 > 1):
                    b.ue()
            if (pps.weighted_pred and slice_type == 1) or (pps.weighted_bipred and slice_type == 0):
                b.ue()
                if sps.chroma_array_type:
                    b.se()
                for n in ((l0, l1) if slice_type == 0 else (l0,)):
                    luma = [b.u(1) for _ in range(n)]
                    chroma = [b.u(1) for _ in range(n)] if sps.chroma_array_type else [0] * n
                    for lf, cf in zip(luma, chroma):
                        if lf:
                            b.se()
                            b.se()
                        if cf:
                            for _ in range(4):
                                b.se()
            b.ue()
        b.se()
        if pps.slice_chroma_qp_offsets_present:
            b.se()
            b.se()
        if pps.chroma_qp_offset_list_enabled:
            b.u(1)
        override = bool(b.u(1)) if pps.deblocking_override_enabled else False
        disabled = pps.deblocking_disabled
        if override:
            disabled = bool(b.u(1))
            if not disabled:
                b.se()
                b.se()
        if pps.loop_filter_across_slices and (sao_luma or sao_chroma or not disabled):
            b.u(1)
    if pps.tiles_or_wpp:
        n = b.ue()
        if n > sps.pic_size_in_ctbs:
            raise MalformedMedia(f"{n} entry points in a picture of {sps.pic_size_in_ctbs} CTBs")
        if n:
            width = b.ue() + 1
            if width > 32:
                raise MalformedMedia(f"entry point offsets of {width} bits")
            for _ in range(n):
                b.u(width)
    if pps.slice_header_extension_present:
        n = b.ue()
        if n > 256:
            raise MalformedMedia(f"slice header extension of {n} bytes (256 at most)")
        for _ in range(n):
            b.u(8)
    b.u(1)                                                 # byte_alignment(): its 1 bit …
    b.u((8 - b.pos % 8) % 8)                               # … then zeros to the boundary


class SliceHeaderReader:
    """A track's parameter sets, and the length of each slice header in its samples.

    ``codec`` is ``"avc"`` or ``"hevc"``; ``config`` the ``avcC``/``hvcC`` payload (the box's
    bytes after its header). Feed every non-VCL NAL unit in stream order to :meth:`observe`
    (in-band SPS/PPS replace earlier ones with the same id) and ask :meth:`header_size` of a
    VCL NAL unit.
    """

    def __init__(self, codec: str, config: bytes = b"") -> None:
        if codec not in ("avc", "hevc"):
            raise UnsupportedMedia(f"codec {codec!r} (avc or hevc)")
        self.codec = codec
        self._sps: dict[int, object] = {}
        self._pps: dict[int, object] = {}
        for ps in parameter_sets_of(config, codec) if config else ():
            self.observe(ps)

    def _nal_header(self, nal: bytes | memoryview) -> int:
        return 1 if self.codec == "avc" else 2

    def observe(self, nal: bytes | memoryview) -> None:
        """Take note of ``nal`` if it is an SPS or PPS."""
        if len(nal) < self._nal_header(nal):
            return
        if self.codec == "avc":
            t = nal[0] & 0x1F
            kinds = {7: (_avc_sps, self._sps), 8: (_avc_pps, self._pps)}
        else:
            t = (nal[0] >> 1) & 0x3F
            kinds = {33: (_hevc_sps, self._sps), 34: (_hevc_pps, self._pps)}
        if t not in kinds:
            return
        parse, table = kinds[t]
        rbsp, _ = unescape(memoryview(nal)[self._nal_header(nal):])
        try:
            key, value = parse(BitReader(rbsp))
        except RanOut:
            raise MalformedMedia(f"parameter set (NAL type {t}) truncated") from None
        table[key] = value

    def header_size(self, nal: bytes | memoryview) -> int:
        """Bytes of the VCL NAL unit ``nal`` after its NAL header up to the end of its slice
        header (rounded up to a whole byte, emulation-prevention bytes counted)."""
        view = memoryview(nal)
        head = self._nal_header(nal)
        if len(view) <= head:
            raise MalformedMedia("VCL NAL unit without a slice header")
        payload = view[head:]
        if self.codec == "avc":
            t, ref_idc = view[0] & 0x1F, (view[0] >> 5) & 0x3
            return header_bytes(payload, lambda b: _avc_slice(b, t, ref_idc, self._sps, self._pps),
                                _MAX_SLICE_HEADER)
        t = (view[0] >> 1) & 0x3F
        return header_bytes(payload, lambda b: _hevc_slice(b, t, self._sps, self._pps),
                            _MAX_SLICE_HEADER)
