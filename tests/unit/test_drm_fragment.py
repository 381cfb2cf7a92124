"""CMAF init and media segments: what the writers lay out, read back by the readers."""

import struct

import pytest

from headwater.drm.bmff.box import box, find_path, full_box, iter_boxes, parse_header
from headwater.drm.bmff.fragment import (
    NON_SYNC_SAMPLE_FLAGS, SYNC_SAMPLE_FLAGS, FragmentSample, InitTrack, TrackDefaults,
    init_segment, media_segment, read_fragments, read_init_segment,
)
from headwater.drm.errors import MalformedMedia
from tests.unit.test_drm_movie import audio_entry, visual_entry


def test_init_segment_round_trip():
    entry = visual_entry()
    pssh = full_box(b"pssh", 0, 0, b"S" * 16, struct.pack(">I", 0))
    buf = init_segment(InitTrack(track_id=3, handler=b"vide", timescale=90000, sample_entry=entry,
                                 language="fra", width=640, height=360, presentation_offset=3000),
                       moov_extra=pssh)
    init = read_init_segment(buf)
    assert init.major_brand == b"cmfc" and b"iso6" in init.compatible_brands
    (t,) = init.movie.tracks
    assert (t.track_id, t.timescale, t.language, t.codec) == (3, 90000, "fra", "avc1.64001f")
    assert t.sample_entry == entry and t.sample_count == 0
    assert t.presentation_offset == 3000
    assert init.defaults[3] == TrackDefaults(track_id=3)
    assert init.pssh == (pssh,)
    tkhd = find_path(buf, [b"moov", b"trak", b"tkhd"], 0)
    assert struct.unpack_from(">II", buf, tkhd.end - 8) == (640 << 16, 360 << 16)


def test_audio_init_has_no_edit_list_without_an_offset():
    buf = init_segment(InitTrack(track_id=1, handler=b"soun", timescale=48000,
                                 sample_entry=audio_entry()))
    assert find_path(buf, [b"moov", b"trak", b"edts"], 0) is None
    assert find_path(buf, [b"moov", b"trak", b"mdia", b"minf", b"smhd"], 0) is not None
    assert read_init_segment(buf).movie.tracks[0].codec == "mp4a.40.2"


def test_negative_offset_is_an_empty_edit():
    buf = init_segment(InitTrack(track_id=1, handler=b"soun", timescale=48000,
                                 sample_entry=audio_entry(), presentation_offset=-4800))
    assert read_init_segment(buf).movie.tracks[0].presentation_offset == -4800


def test_media_segment_round_trip_with_signed_composition_offsets():
    samples = [FragmentSample(512, 3, SYNC_SAMPLE_FLAGS, 1024),
               FragmentSample(512, 2, NON_SYNC_SAMPLE_FLAGS, -512),
               FragmentSample(500, 4, NON_SYNC_SAMPLE_FLAGS, 0)]
    data = [b"abc", b"de", b"fghi"]
    buf = media_segment(sequence_number=7, track_id=2, base_decode_time=2**40,
                        samples=samples, data=data)
    assert [h.type for h in iter_boxes(buf)] == [b"styp", b"moof", b"mdat"]
    (frag,) = read_fragments(buf)
    assert frag.sequence_number == 7
    (traf,) = frag.tracks
    assert (traf.track_id, traf.base_decode_time) == (2, 2**40)
    assert list(traf.samples) == samples
    assert [buf[o:o + n] for o, n in traf.data_ranges] == data
    assert traf.other_boxes == ()


def test_audio_segment_omits_composition_offsets_and_styp():
    buf = media_segment(sequence_number=1, track_id=1, base_decode_time=0,
                        samples=[FragmentSample(1024, 2, SYNC_SAMPLE_FLAGS)], data=[b"xy"],
                        styp=False)
    assert [h.type for h in iter_boxes(buf)] == [b"moof", b"mdat"]
    trun = find_path(buf, [b"moof", b"traf", b"trun"])
    flags = struct.unpack_from(">I", buf, trun.payload_start)[0] & 0xFFFFFF
    assert flags & 0x800 == 0


def test_extra_traf_boxes_land_where_announced_and_data_offset_follows():
    asked = []

    def extra(at):
        asked.append(at)
        return box(b"free", b"x" * 37) + box(b"skip", b"y" * 5)

    samples = [FragmentSample(10, 5, SYNC_SAMPLE_FLAGS, 0)] * 3
    buf = media_segment(sequence_number=1, track_id=1, base_decode_time=0, samples=samples,
                        data=[b"11111", b"22222", b"33333"], traf_extra=extra)
    (frag,) = read_fragments(buf)
    (traf,) = frag.tracks
    moof_start = frag.offset
    free = parse_header(buf, moof_start + asked[0])
    assert free.type == b"free" and free.payload_size == 37
    assert traf.offset_in_moof[b"free"] == asked[0]
    assert [t for t, _ in traf.other_boxes] == [b"free", b"skip"]
    assert [buf[o:o + n] for o, n in traf.data_ranges] == [b"11111", b"22222", b"33333"]


def test_reader_applies_tfhd_and_trex_defaults_and_first_sample_flags():
    # What Shaka Packager writes: tfhd default duration and flags, trun sizes only, with the
    # first sample's flags given apart.
    tfhd = full_box(b"tfhd", 0, 0x020028, struct.pack(">III", 1, 1000, NON_SYNC_SAMPLE_FLAGS))
    tfdt = full_box(b"tfdt", 0, 0, struct.pack(">I", 5000))
    trun_body = struct.pack(">IiI", 2, 0, SYNC_SAMPLE_FLAGS) + struct.pack(">II", 3, 4)
    trun_len = 12 + len(trun_body)
    moof_len = 8 + 16 + 8 + len(tfhd) + len(tfdt) + trun_len
    trun_body = struct.pack(">IiI", 2, moof_len + 8, SYNC_SAMPLE_FLAGS) + struct.pack(">II", 3, 4)
    moof = box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", 1)),
               box(b"traf", tfhd, tfdt, full_box(b"trun", 0, 0x205, trun_body)))
    buf = moof + box(b"mdat", b"abcdefg")
    (frag,) = read_fragments(buf, {1: TrackDefaults(track_id=1, size=99)})
    (traf,) = frag.tracks
    assert traf.base_decode_time == 5000
    assert [(s.duration, s.size, s.flags) for s in traf.samples] == [
        (1000, 3, SYNC_SAMPLE_FLAGS), (1000, 4, NON_SYNC_SAMPLE_FLAGS)]
    assert [buf[o:o + n] for o, n in traf.data_ranges] == [b"abc", b"defg"]


def test_reader_refuses_samples_outside_the_segment():
    buf = media_segment(sequence_number=1, track_id=1, base_decode_time=0,
                        samples=[FragmentSample(1, 4, SYNC_SAMPLE_FLAGS)], data=[b"abcd"])
    with pytest.raises(MalformedMedia, match="outside"):
        list(read_fragments(buf[:-2]))


def test_writer_refuses_data_that_disagrees_with_the_sizes():
    with pytest.raises(ValueError):
        media_segment(sequence_number=1, track_id=1, base_decode_time=0,
                      samples=[FragmentSample(1, 4, SYNC_SAMPLE_FLAGS)], data=[b"abc"])


def test_reader_caps_a_trun_of_fieldless_entries():
    # Durations, sizes and flags all from defaults: 2**32 - 1 entries in 20 bytes.
    trun = full_box(b"trun", 0, 0, struct.pack(">I", 2**32 - 1))
    moof = box(b"moof", full_box(b"mfhd", 0, 0, bytes(4)),
               box(b"traf", full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1)), trun))
    with pytest.raises(MalformedMedia, match="trun of"):
        list(read_fragments(moof))
