"""Sample encryption: known-answer vectors, the pattern against a block-by-block reference,
IV sequences, round trips over random NAL structures, and the track protector's boxes."""

import pytest
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.drm.bmff.box import find_box, iter_boxes, parse_header
from headwater.drm.bmff.protection import (
    COMMON_SYSTEM_ID, Pssh, Subsample, parse_pssh, parse_saio, parse_senc, parse_sinf,
)
from headwater.drm.errors import BadKey, UnsupportedMedia
from headwater.drm.package.encrypt import SampleEncryptor, TrackProtector, codec_of_entry

# NIST SP 800-38A F.5.1 (CTR-AES128) and F.2.1 (CBC-AES128).
NIST_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NIST_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
NIST_CTR = bytes.fromhex(
    "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
    "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee")
NIST_CBC = bytes.fromhex(
    "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
    "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7")
KEY = bytes(range(16))
KID = bytes.fromhex("00112233445566778899aabbccddeeff")


def nal(body: bytes, n: int = 4) -> bytes:
    return len(body).to_bytes(n, "big") + body


def test_cenc_whole_sample_matches_nist_ctr():
    e = SampleEncryptor("cenc", NIST_KEY, "aac", iv=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"))
    ct, aux = e.encrypt(NIST_PLAIN + b"tail")
    assert ct[:64] == NIST_CTR and aux.subsamples == () and len(ct) == 68
    assert e.decrypt(ct, aux) == NIST_PLAIN + b"tail"


def test_cbcs_audio_matches_nist_cbc_and_leaves_the_partial_block_clear():
    e = SampleEncryptor("cbcs", NIST_KEY, "aac", iv=bytes(range(16)))
    ct, aux = e.encrypt(NIST_PLAIN + b"partial")
    assert ct == NIST_CBC + b"partial" and aux.iv == bytes(range(16))
    assert e.pattern == (0, 0)


def _reference_cbcs(key, iv, data, subs, crypt=1, skip=9):
    """Block by block, the way 23001-7 §10.4 describes it."""
    out = bytearray(data)
    at = 0
    for s in subs:
        at += s.clear
        prev = iv
        for b in range(s.protected // 16):
            if b % (crypt + skip) < crypt:
                a = at + 16 * b
                block = bytes(x ^ y for x, y in zip(out[a:a + 16], prev))
                prev = AES.new(key, AES.MODE_ECB).encrypt(block)
                out[a:a + 16] = prev
        at += s.protected
    return bytes(out)


def _reference_ctr(key, iv8, data, subs):
    out = bytearray(data)
    counter = 0
    at = 0
    ecb = AES.new(key, AES.MODE_ECB)
    for s in subs:
        at += s.clear
        for i in range(s.protected):
            if (counter + i) % 16 == 0:
                ks = ecb.encrypt(iv8 + ((counter + i) // 16).to_bytes(8, "big"))
            out[at + i] ^= ks[(counter + i) % 16]
        counter += s.protected
        at += s.protected
    return bytes(out)


@st.composite
def video_samples(draw):
    codec = draw(st.sampled_from(["avc", "hevc"]))
    n = draw(st.sampled_from([1, 2, 4]))
    out = b""
    for _ in range(draw(st.integers(1, 5))):
        if codec == "avc":
            first = bytes([draw(st.sampled_from([1, 5, 6, 7]))])
        else:
            first = bytes([draw(st.sampled_from([1, 19, 32, 39])) << 1, 1])
        limit = min(600, (1 << (8 * n)) - 1 - len(first))
        out += nal(first + draw(st.binary(min_size=0, max_size=limit)), n)
    return codec, n, out


@settings(max_examples=60, deadline=None)
@given(video_samples(), st.sampled_from(["cenc", "cbcs"]), st.binary(min_size=16, max_size=16))
def test_round_trip_and_agreement_with_the_block_reference(case, scheme, key):
    codec, n, sample = case
    e = SampleEncryptor(scheme, key, codec, nal_length_size=n, iv=bytes(8 if scheme == "cenc" else 16))
    ct, aux = e.encrypt(sample)
    assert len(ct) == len(sample)
    assert e.decrypt(ct, aux) == sample
    if scheme == "cbcs":
        assert ct == _reference_cbcs(key, aux.iv, sample, aux.subsamples)
    else:
        assert ct == _reference_ctr(key, aux.iv, sample, aux.subsamples)
    at = 0                                         # clear ranges are untouched
    for s in aux.subsamples:
        assert ct[at:at + s.clear] == sample[at:at + s.clear]
        at += s.clear + s.protected


def test_cbcs_pattern_touches_only_every_tenth_block():
    body = bytes([0x65]) + bytes(16 * 25 + 7)
    sample = nal(body)
    e = SampleEncryptor("cbcs", KEY, "avc", iv=bytes(16))
    ct, aux = e.encrypt(sample)
    assert aux.subsamples == (Subsample(5, 16 * 25 + 7),)
    assert {(i - 5) // 16 for i in range(5, len(sample)) if ct[i] != sample[i]} == {0, 10, 20}
    assert ct[-7:] == sample[-7:]


def test_cenc_iv_sequences():
    e = SampleEncryptor("cenc", KEY, "aac", iv=bytes.fromhex("00000000000000ff"))
    ivs = [e.encrypt(b"x" * 40)[1].iv.hex() for _ in range(3)]
    assert ivs == ["00000000000000ff", "0000000000000100", "0000000000000101"]
    e16 = SampleEncryptor("cenc", KEY, "aac", iv=bytes(15) + b"\x01")
    assert [e16.encrypt(b"x" * 40)[1].iv[-1] for _ in range(3)] == [1, 4, 7]   # + ceil(40/16)
    wrap = SampleEncryptor("cenc", KEY, "aac", iv=b"\xff" * 8)
    assert [wrap.encrypt(b"x")[1].iv for _ in range(2)] == [b"\xff" * 8, bytes(8)]
    draws = iter([b"A" * 8, b"B" * 8, b"C" * 8])
    rnd = SampleEncryptor("cenc", KEY, "aac", iv_mode="random", randbytes=lambda k: next(draws))
    assert [rnd.encrypt(b"x")[1].iv for _ in range(2)] == [b"B" * 8, b"C" * 8]


@pytest.mark.parametrize("key", [b"", bytes(15), bytes(17), bytes(32), "0" * 16])
def test_wrong_key_length_is_a_clear_error(key):
    with pytest.raises(BadKey, match="16 bytes"):
        SampleEncryptor("cenc", key, "avc")


def test_unknown_scheme_and_codec_refused():
    with pytest.raises(UnsupportedMedia):
        SampleEncryptor("cens", KEY, "avc")
    with pytest.raises(UnsupportedMedia):
        SampleEncryptor("cenc", KEY, "av1")
    with pytest.raises(BadKey):
        TrackProtector(scheme="cenc", key=KEY, kid=b"short", codec="avc")


def _avc1(nal_length_size=4) -> bytes:
    from headwater.drm.bmff.box import box
    fields = bytes(6) + b"\x00\x01" + bytes(16) + (320).to_bytes(2, "big") + \
        (180).to_bytes(2, "big") + bytes(50)
    avcc = box(b"avcC", bytes([1, 0x64, 0, 0x1F, 0xFC | (nal_length_size - 1), 0xE0, 0]))
    return box(b"avc1", fields, avcc, box(b"btrt", bytes(12)))


def test_track_protector_wires_entry_samples_and_boxes():
    # (no parameter sets in this avcC: only NAL headers stay clear)
    tp = TrackProtector.for_sample_entry(_avc1(2), scheme="cbcs", key=KEY, kid=KID,
                                         iv=bytes(range(16)), slice_headers=None,
                                         extra_pssh=(Pssh(b"W" * 16, (), b"widevine-data", 0),))
    assert codec_of_entry(_avc1(2)) == ("avc", 2)
    entry = tp.sample_entry(_avc1(2))
    h = parse_header(entry, 0)
    assert h.type == b"encv"
    sinf = find_box(entry, b"sinf", 8 + 78)
    info = parse_sinf(entry, sinf)
    assert (info.original_format, info.scheme) == (b"avc1", "cbcs")
    assert (info.tenc.crypt_byte_block, info.tenc.skip_byte_block) == (1, 9)
    assert info.tenc.constant_iv == bytes(range(16)) and info.tenc.kid == KID

    samples = [nal(bytes([0x65]) + bytes(range(200)), 2), nal(bytes([0x41]) + b"q" * 90, 2)]
    out = [tp.encrypt(s) for s in samples]
    traf = tp.traf_boxes([a for _, a in out], at=100)
    hs = list(iter_boxes(traf))
    assert [x.type for x in hs] == [b"saiz", b"saio", b"senc"]
    (offset,) = parse_saio(traf, hs[1]).offsets
    senc = parse_senc(traf, hs[2], 0, bytes(range(16)))
    assert offset - 100 == hs[2].offset + 16          # the first subsample count
    assert [a for _, a in out] == list(senc.samples)

    boxes = list(iter_boxes(tp.pssh_boxes()))
    common = parse_pssh(tp.pssh_boxes(), boxes[0])
    assert (common.system_id, common.kids, common.version) == (COMMON_SYSTEM_ID, (KID,), 1)
    assert parse_pssh(tp.pssh_boxes(), boxes[1]).data == b"widevine-data"
    with pytest.raises(UnsupportedMedia):
        tp.sample_entry(_mp4a())


def _mp4a(version=0) -> bytes:
    from headwater.drm.bmff.box import box
    fields = bytes(6) + b"\x00\x01" + version.to_bytes(2, "big") + bytes(6) + \
        (2).to_bytes(2, "big") + (16).to_bytes(2, "big") + bytes(4) + (48000 << 16).to_bytes(4, "big")
    return box(b"mp4a", fields, box(b"esds", bytes(20)))


def test_audio_protector_cenc():
    tp = TrackProtector.for_sample_entry(_mp4a(), scheme="cenc", key=KEY, kid=KID, iv=bytes(8))
    entry = tp.sample_entry(_mp4a())
    assert entry[4:8] == b"enca"
    info = parse_sinf(entry, find_box(entry, b"sinf", 8 + 28))
    assert (info.tenc.version, info.tenc.per_sample_iv_size, info.scheme) == (0, 8, "cenc")
    ct, aux = tp.encrypt(b"a" * 100)
    assert aux.subsamples == () and tp.encryptor.decrypt(ct, aux) == b"a" * 100
    traf = tp.traf_boxes([aux], at=0)
    hs = list(iter_boxes(traf))
    assert parse_saio(traf, hs[1]).offsets == (hs[2].offset + 16,)
    assert traf[hs[2].offset + 16:hs[2].offset + 24] == aux.iv


@pytest.mark.parametrize("size", [15, 16 * 512, 16 * 512 + 1, 40_000])
@pytest.mark.parametrize("iv", [bytes.fromhex("0102030405060708"), b"\xff" * 15 + b"\xfe"])
def test_ctr_short_and_long_paths_agree_with_counter_blocks(size, iv):
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    e = SampleEncryptor("cenc", KEY, "aac", iv=iv)
    ct, aux = e.encrypt(data)
    start = int.from_bytes(iv + bytes(8) if len(iv) == 8 else iv, "big")
    blocks = b"".join(((start + i) % (1 << 128)).to_bytes(16, "big") for i in range(-(-size // 16)))
    stream = AES.new(KEY, AES.MODE_ECB).encrypt(blocks)
    assert ct == bytes(a ^ b for a, b in zip(data, stream))
    assert e.decrypt(ct, aux) == data


@settings(max_examples=40, deadline=None)
@given(st.lists(video_samples(), min_size=1, max_size=6), st.sampled_from(["cenc", "cbcs"]),
       st.integers(0, 10_000))
def test_fragment_round_trip_through_the_boxes(cases, scheme, at):
    """encrypt → traf boxes → parse the boxes back → decrypt: the clear samples again."""
    codec, n = cases[0][0], cases[0][1]
    samples = [s for c, k, s in cases if (c, k) == (codec, n)]
    tp = TrackProtector(scheme=scheme, key=KEY, kid=KID, codec=codec, nal_length_size=n,
                        randbytes=lambda k: bytes(range(k)))
    sealed = [tp.encrypt(s) for s in samples]
    boxes = tp.traf_boxes([a for _, a in sealed], at)
    senc_h = [h for h in iter_boxes(boxes) if h.type == b"senc"][0]
    tenc = tp.tenc
    parsed = parse_senc(boxes, senc_h, tenc.per_sample_iv_size, tenc.constant_iv)
    for (ct, _), aux, plain in zip(sealed, parsed.samples, samples, strict=True):
        assert tp.encryptor.decrypt(ct, aux) == plain
