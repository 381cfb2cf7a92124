"""A progressive MP4's moov: tracks, codec strings, sample tables expanded, hostile tables refused.

The moovs are built here with the box writers, so each test states exactly the tables it feeds.
"""

import struct

import pytest

from headwater.drm.bmff.box import box, full_box
from headwater.drm.bmff.codecs import read_sample_entry
from headwater.drm.bmff.movie import MovieLimits, parse_moov
from headwater.drm.errors import MalformedMedia, UnsupportedMedia

# An avcC of High profile (0x64), no constraints, level 3.1 (0x1f); SPS/PPS bodies are opaque.
AVCC = box(b"avcC", bytes([1, 0x64, 0x00, 0x1F, 0xFF, 0xE1]), struct.pack(">H", 4), b"\x67SPS",
           b"\x01", struct.pack(">H", 4), b"\x68PPS")


def visual_entry(fmt=b"avc1", cfg=AVCC, width=640, height=360):
    fields = (bytes(6) + struct.pack(">H", 1) + bytes(16) + struct.pack(">HH", width, height)
              + struct.pack(">II", 0x480000, 0x480000) + bytes(4) + struct.pack(">H", 1)
              + bytes(32) + struct.pack(">Hh", 0x18, -1))
    assert len(fields) == 78
    return box(fmt, fields, cfg)


def esds(asc=bytes([0x12, 0x10]), oti=0x40):
    dsi = bytes([0x05, len(asc)]) + asc
    dcd = bytes([0x04, 13 + len(dsi), oti, 0x15]) + bytes(11) + dsi
    es = bytes([0x03, 3 + len(dcd) + 3]) + b"\x00\x01\x00" + dcd + bytes([0x06, 1, 2])
    return full_box(b"esds", 0, 0, es)


def audio_entry(cfg=None, channels=2, rate=48000):
    fields = (bytes(6) + struct.pack(">H", 1) + bytes(8) + struct.pack(">HH", channels, 16)
              + bytes(4) + struct.pack(">I", rate << 16))
    return box(b"mp4a", fields, esds() if cfg is None else cfg)


def table(btype, fmt, rows, version=0):
    return full_box(btype, version, 0, struct.pack(">I", len(rows)),
                    b"".join(struct.pack(fmt, *r) for r in rows))


def trak(track_id=1, handler=b"vide", entry=None, timescale=12800, stts=((4, 512),),
         ctts=None, stss=(1, 3), sizes=(10, 20, 30, 40), stsc=((1, 2, 1),), stco=(100, 200),
         elst=None, language=b"\x15\xc7", extra_stbl=b"", co64=False, stz2=None):
    entry = entry if entry is not None else (visual_entry() if handler == b"vide" else audio_entry())
    parts = [full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry), table(b"stts", ">II", stts)]
    if ctts is not None:
        parts.append(table(b"ctts", ">Ii", ctts, version=1))
    if stss is not None:
        parts.append(table(b"stss", ">I", [(n,) for n in stss]))
    if stz2 is not None:
        parts.append(stz2)
    else:
        parts.append(full_box(b"stsz", 0, 0, struct.pack(">II", 0, len(sizes)),
                              b"".join(struct.pack(">I", s) for s in sizes)))
    parts.append(table(b"stsc", ">III", stsc))
    parts.append(table(b"co64", ">Q", [(o,) for o in stco]) if co64
                 else table(b"stco", ">I", [(o,) for o in stco]))
    parts.append(extra_stbl)
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, 2048), language, bytes(2))
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), b"h\x00")
    tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, track_id, 0, 0), bytes(60))
    edts = b"" if elst is None else box(b"edts", table(b"elst", ">IiHH", elst))
    return box(b"trak", tkhd, edts, box(b"mdia", mdhd, hdlr, box(b"minf", box(b"stbl", *parts))))


def moov(*traks, timescale=1000):
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, 0), bytes(80))
    return box(b"moov", mvhd, *traks)


def test_tables_expand_into_samples():
    m = parse_moov(moov(trak(ctts=((1, 1024), (1, -512), (2, 0)), elst=((1000, 1024, 1, 0),))),
                   file_size=1000)
    (t,) = m.tracks
    assert (t.track_id, t.handler, t.timescale, t.language) == (1, b"vide", 12800, "eng")
    assert (t.codec, t.width, t.height, t.frame_rate) == ("avc1.64001f", 640, 360, 25)
    assert t.presentation_offset == 1024
    got = [(s.index, s.offset, s.size, s.dts, s.cts_offset, s.duration, s.sync) for s in t.samples()]
    assert got == [
        (0, 100, 10, 0, 1024, 512, True), (1, 110, 20, 512, -512, 512, False),
        (2, 200, 30, 1024, 0, 512, True), (3, 230, 40, 1536, 0, 512, False)]


def test_stsc_runs_co64_stz2_and_no_stss():
    # Chunks 1-2 hold one sample each, chunk 3 holds two; 4-bit sizes in stz2.
    stz2 = full_box(b"stz2", 0, 0, bytes(3), bytes([4]), struct.pack(">I", 4), bytes([0x12, 0x3F]))
    m = parse_moov(moov(trak(handler=b"soun", timescale=48000, stts=((4, 1024),), stss=None,
                             stsc=((1, 1, 1), (3, 2, 1)), stco=(2**33, 50, 60), co64=True,
                             stz2=stz2)), file_size=2**34)
    (t,) = m.tracks
    assert (t.codec, t.sample_rate, t.channels, t.frame_rate) == ("mp4a.40.2", 44100, 2, None)
    got = [(s.offset, s.size, s.sync) for s in t.samples()]
    assert got == [(2**33, 1, True), (50, 2, True), (60, 3, True), (63, 15, True)]


def test_leading_empty_edit_delays_the_presentation():
    # 500 ms of nothing (movie timescale 1000) before media time 0, in a 12800 Hz track.
    m = parse_moov(moov(trak(elst=((500, -1, 1, 0), (1000, 0, 1, 0)))), file_size=1000)
    assert m.tracks[0].presentation_offset == -6400


def test_other_handlers_are_listed_not_packaged():
    text = trak(track_id=3, handler=b"text", entry=box(b"tx3g", bytes(8)))
    m = parse_moov(moov(trak(), text), file_size=1000)
    assert [t.track_id for t in m.tracks] == [1] and m.ignored == ((3, b"text"),)


@pytest.mark.parametrize("cfg, codec", [
    # Main profile, compat flag 1 and 2 set (reversed: 0x6), level 93 (3.1), constraints B0.
    (bytes([1, 0x01, 0x60, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 93]), "hvc1.1.6.L93.B0"),
    # Main 10, high tier, profile space 0, level 120, no constraint bytes.
    (bytes([1, 0x22, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 120]), "hvc1.2.4.H120"),
])
def test_hevc_codec_strings(cfg, codec):
    entry = visual_entry(b"hvc1", box(b"hvcC", cfg + bytes(10)))
    assert read_sample_entry(entry, b"vide").codec == codec


def test_aac_codec_strings():
    # HE-AAC (AOT 5) at 24 kHz mono: 00101 0110 0001 ...
    he = audio_entry(esds(asc=bytes([0x2B, 0x08])))
    assert read_sample_entry(he, b"soun").codec == "mp4a.40.5"
    mpeg2 = audio_entry(esds(oti=0x67, asc=b""))
    assert read_sample_entry(mpeg2, b"soun").codec == "mp4a.67"
    with pytest.raises(UnsupportedMedia):
        read_sample_entry(audio_entry(esds(oti=0x6B, asc=b"")), b"soun")   # MP3


@pytest.mark.parametrize("kwargs, error, match", [
    # stsz claims more samples than it holds entries for.
    (dict(stz2=full_box(b"stsz", 0, 0, struct.pack(">II", 0, 1000), bytes(16))),
     MalformedMedia, "entries"),
    # stts and stsz disagree on the count.
    (dict(stts=((5, 512),)), MalformedMedia, "stts covers 5"),
    # A chunk whose samples run past the file.
    (dict(stco=(100, 990)), MalformedMedia, "past the end"),
    # stsc names a chunk that does not exist, and one that goes backwards.
    (dict(stsc=((1, 2, 1), (5, 1, 1))), MalformedMedia, "first_chunk"),
    (dict(stsc=((2, 2, 1), (1, 2, 1))), MalformedMedia, "first_chunk"),
    # stsc's chunks hold 6 samples where stsz has 4.
    (dict(stsc=((1, 3, 1),)), MalformedMedia, "chunks hold 6"),
    # Sync sample numbers out of order or past the end.
    (dict(stss=(3, 1)), MalformedMedia, "stss"),
    (dict(stss=(9,)), MalformedMedia, "stss"),
    # ctts covering too few samples.
    (dict(ctts=((2, 0),)), MalformedMedia, "ctts covers 2"),
    # A second sample description in use.
    (dict(stsc=((1, 2, 2),)), UnsupportedMedia, "sample description"),
    # A codec the packager does not take.
    (dict(entry=visual_entry(b"av01", box(b"av1C", bytes(8)))), UnsupportedMedia, "av01"),
    (dict(entry=visual_entry(b"avc1", box(b"free"))), MalformedMedia, "avcC"),
    (dict(entry=visual_entry(b"encv", box(b"sinf"))), UnsupportedMedia, "encrypted"),
])
def test_hostile_tables_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        parse_moov(moov(trak(**kwargs)), file_size=1000)


def test_sample_count_cap_holds_for_constant_sizes():
    # A constant-size stsz costs no bytes per sample, so only the cap stops 2**32 samples.
    huge = full_box(b"stsz", 0, 0, struct.pack(">II", 1, 2**32 - 1))
    with pytest.raises(UnsupportedMedia, match="samples"):
        parse_moov(moov(trak(stz2=huge)), file_size=1000, limits=MovieLimits(max_samples=10**6))


def test_truncated_moov_and_bad_headers():
    good = moov(trak())
    for cut in (len(good) - 1, 50, 7):
        with pytest.raises(MalformedMedia):
            parse_moov(good[:cut], file_size=1000)
    with pytest.raises(MalformedMedia, match="mvhd"):
        parse_moov(box(b"moov", trak()), file_size=1000)
    with pytest.raises(MalformedMedia, match="track_ID"):
        parse_moov(moov(trak(), trak()), file_size=1000)


def test_protected_entry_reads_its_original_format_when_allowed():
    sinf = box(b"sinf", box(b"frma", b"avc1"), full_box(b"schm", 0, 0, b"cenc", bytes(4)))
    entry = visual_entry(b"encv", AVCC + sinf)
    m = parse_moov(moov(trak(entry=entry)), file_size=1000, allow_protected=True)
    assert m.tracks[0].format == b"avc1" and m.tracks[0].codec == "avc1.64001f"
    assert m.tracks[0].sample_entry == entry
