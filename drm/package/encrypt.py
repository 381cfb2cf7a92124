"""Sample encryption per ISO/IEC 23001-7 (``cenc`` and ``cbcs``), and the per-track protector the
segmenter calls. Sans-IO: bytes in, bytes out; randomness is injected.

``cenc`` (AES-128-CTR). Each sample has its own IV (8 bytes: the counter block is the IV
followed by a 64-bit block counter from 0). The key stream runs on across the protected ranges
of one sample, so the ranges are gathered into one buffer, encrypted in one call and scattered
back. Per-sample IVs either count up from a random start, +1 per sample for 8-byte IVs (the
block counter occupies the low 64 bits, so one sample's counters can never reach the next
sample's) and + the sample's block count for 16-byte IVs — as Shaka Packager does (the tests
check its IVs) — or are drawn at random for every sample.

``cbcs`` (AES-128-CBC with a pattern). One constant 16-byte IV for the whole track (in
``tenc``), the CBC chain restarting from it at every subsample. Video uses the 1:9 pattern: in
each protected range, 1 block of 16 bytes enciphered then 9 left clear, repeating; a trailing
partial block stays clear. Audio is enciphered whole (every complete block of the sample, a
trailing partial block clear), with no subsamples. The blocks a pattern enciphers in one
subsample form one CBC chain, so they are gathered with 16 strided slice copies (one per byte
of the block, all in C), enciphered in one call, and scattered back the same way.

Which bytes of a video sample are protected (NAL and slice headers clear, ``cenc`` ranges
block-aligned) is :mod:`~headwater.drm.package.nal`'s business for H.264 and HEVC, and
:mod:`~headwater.drm.package.vp9`'s for VP9 (each frame's uncompressed header and a superframe's
index clear, every frame's protected bytes a multiple of 16, in ``cenc`` and ``cbcs`` alike).
Opus, like AAC, is encrypted whole (no subsamples). For H.264, HEVC and AAC, given the same clear samples,
key and IV, the result is byte for byte what Shaka Packager 3.8 writes.

AES is pycryptodome's (AES-NI where the CPU has it). Creating a pycryptodome cipher costs
more than enciphering an audio frame, so each encryptor keeps one ECB and one CBC object per
direction for the life of the track (see ``_ctr_xor`` and ``_cbc_chain``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from Crypto.Cipher import AES
from Crypto.Util.strxor import strxor

from headwater.drm.bmff.box import iter_boxes, parse_header
from headwater.drm.bmff.protection import (
    COMMON_SYSTEM_ID, ENCRYPTED_ENTRY, VISUAL_ENTRY_FIELDS, Pssh, SampleAux, Subsample, Tenc,
    aux_boxes, per_sample_iv_size, protect_sample_entry, pssh_box,
)
from headwater.drm.errors import BadKey, MalformedMedia, UnsupportedMedia
from headwater.drm.package.nal import nal_length_size_of, subsamples_for
from headwater.drm.package.slice_header import SliceHeaderReader
from headwater.drm.package.vp9 import Vp9HeaderReader

__all__ = [
    "Subsample", "SampleAux", "SampleEncryptor", "TrackProtector", "SCHEMES", "CODECS",
    "VIDEO_PATTERN", "codec_of_entry", "ctr_xor",
]

SCHEMES = ("cenc", "cbcs")
CODECS = ("avc", "hevc", "vp9", "aac", "opus")
#: Codecs whose samples are encrypted whole (no subsamples, no pattern under ``cbcs``).
AUDIO_CODECS = frozenset({"aac", "opus"})
#: The ``cbcs`` video pattern: 1 block enciphered, 9 clear (23001-7 §10.4 recommends it).
VIDEO_PATTERN = (1, 9)
_BLOCK = 16
#: Up to this many blocks (8 KiB) a sample's CTR key stream comes from the track's ECB cipher
#: over template counter blocks; longer ones get their own CTR cipher (its setup amortised).
_SHORT_BLOCKS = 512
#: Below this many bytes XOR in Python integers rather than through cffi (see _xor).
_SHORT_XOR = 2048
#: Low halves 0, 1, 2, … of 8-byte-IV counter blocks (high halves zero), XORed with the IV.
_COUNTERS = b"".join(bytes(8) + i.to_bytes(8, "big") for i in range(_SHORT_BLOCKS))
_ENTRY_CODEC = {b"avc1": "avc", b"avc3": "avc", b"hvc1": "hevc", b"hev1": "hevc", b"vp09": "vp9",
                b"mp4a": "aac", b"Opus": "opus"}


def _xor(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> bytes:
    """``a`` XOR ``b`` (equal lengths). Python integers for short inputs: pycryptodome's
    ``strxor`` costs a few microseconds of cffi set-up per call, more than the XOR itself."""
    n = len(a)
    if n > _SHORT_XOR:
        return strxor(a, b)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


def ctr_xor(ecb: Any, key: bytes, iv: bytes, data: bytes | memoryview) -> bytes:
    """``data`` XOR the AES-128-CTR key stream whose first counter block is the 8-byte ``iv``
    followed by a 64-bit block number from 0. ``ecb`` is a long-lived ECB cipher under ``key``:
    short data are enciphered as counter blocks through it, because creating a pycryptodome
    cipher per sample costs more than enciphering a typical audio frame; long data get a CTR
    cipher of their own (its set-up amortised)."""
    n = len(data)
    blocks = -(-n // _BLOCK)
    if blocks > _SHORT_BLOCKS:
        return AES.new(key, AES.MODE_CTR, nonce=iv, initial_value=0).encrypt(data)
    counters = _xor(_COUNTERS[:blocks * _BLOCK], (iv + bytes(8)) * blocks)
    return _xor(data, ecb.encrypt(counters)[:n])


def _check_key(key: bytes, what: str = "content key") -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 16:
        n = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise BadKey(f"{what} must be 16 bytes (AES-128), got {n}")
    return bytes(key)


class SampleEncryptor:
    """Encrypts and decrypts the samples of one track.

    ``scheme`` is ``"cenc"`` or ``"cbcs"``; ``key`` the 16-byte content key; ``codec`` ``"avc"``,
    ``"hevc"`` (subsample encryption of NAL units, ``nal_length_size`` from the sample entry),
    ``"vp9"`` (subsample encryption of frames, headers clear; samples must come in decode
    order, as the frame-size state of the header reader runs on from sample to sample) or
    ``"aac"``/``"opus"`` (whole-sample). ``randbytes`` supplies randomness: the first ``cenc`` IV (or
    every one, with ``iv_mode="random"``) and the ``cbcs`` constant IV unless ``iv`` gives
    the starting/constant IV explicitly (8 or 16 bytes for ``cenc``, 16 for ``cbcs``).
    ``slice_headers`` (video) keeps slice headers clear, as CMAF asks of ``cbcs``; without it
    only NAL headers stay clear (see :mod:`~headwater.drm.package.nal`).
    """

    def __init__(self, scheme: str, key: bytes, codec: str, *, nal_length_size: int = 4,
                 iv: bytes | None = None, iv_mode: str = "increment",
                 randbytes: Callable[[int], bytes] = secrets.token_bytes,
                 slice_headers: SliceHeaderReader | None = None) -> None:
        if scheme not in SCHEMES:
            raise UnsupportedMedia(f"protection scheme {scheme!r} (cenc or cbcs)")
        if codec not in CODECS:
            raise UnsupportedMedia(f"codec {codec!r} ({', '.join(CODECS)})")
        if iv_mode not in ("increment", "random"):
            raise ValueError(f"iv_mode {iv_mode!r} (increment or random)")
        if codec in ("avc", "hevc") and nal_length_size not in (1, 2, 4):
            raise UnsupportedMedia(f"NAL length size {nal_length_size} (1, 2 or 4)")
        self.scheme = scheme
        self.key = _check_key(key)
        self.codec = codec
        self.nal_length_size = nal_length_size
        self.iv_mode = iv_mode
        self.slice_headers = slice_headers
        self.vp9_headers = Vp9HeaderReader() if codec == "vp9" else None
        self._randbytes = randbytes
        # Long-lived ciphers (see _ctr_xor and _cbc_chain): one object per track and
        # direction, so no pycryptodome object is created per sample. Not thread-safe: one
        # encryptor per track, used by one task.
        self._ecb = AES.new(self.key, AES.MODE_ECB)
        self._cbc_enc = self._cbc_dec = None
        self._enc_last = self._dec_last = b""
        if scheme == "cbcs":
            iv = randbytes(16) if iv is None else iv
            if len(iv) != 16:
                raise ValueError(f"a cbcs constant IV is 16 bytes, not {len(iv)}")
        else:
            iv = randbytes(8) if iv is None else iv
            if len(iv) not in (8, 16):
                raise ValueError(f"a cenc IV is 8 or 16 bytes, not {len(iv)}")
        self.iv = bytes(iv)
        self._next_iv = self.iv

    @property
    def pattern(self) -> tuple[int, int]:
        """(crypt, skip) blocks: 1:9 for ``cbcs`` video, (0, 0) — no pattern — otherwise."""
        return VIDEO_PATTERN if self.scheme == "cbcs" and self.codec not in AUDIO_CODECS else (0, 0)

    @property
    def per_sample_iv_size(self) -> int:
        """IV bytes each sample carries in ``senc`` (0 for ``cbcs``)."""
        return per_sample_iv_size(self.scheme, len(self.iv))

    def subsamples(self, sample: bytes | memoryview) -> tuple[Subsample, ...]:
        """The subsample map ``sample`` will be encrypted with (empty: the whole sample)."""
        if self.codec in AUDIO_CODECS:
            return ()
        if self.vp9_headers is not None:
            return self.vp9_headers.subsamples(sample)
        return subsamples_for(sample, self.nal_length_size, self.codec, self.scheme,
                              self.slice_headers)

    def _take_iv(self, protected_bytes: int) -> bytes:
        if self.scheme == "cbcs":
            return self.iv
        if self.iv_mode == "random":
            return self._randbytes(len(self.iv))
        iv = self._next_iv
        step = 1 if len(iv) == 8 else -(-protected_bytes // _BLOCK)
        self._next_iv = ((int.from_bytes(iv, "big") + step) % (1 << (8 * len(iv)))).to_bytes(len(iv), "big")
        return iv

    def encrypt(self, sample: bytes | memoryview) -> tuple[bytes, SampleAux]:
        """``sample`` encrypted, and the auxiliary information a player needs to decrypt it."""
        subs = self.subsamples(sample)
        protected = sum(s.protected for s in subs) if subs else len(sample)
        aux = SampleAux(self._take_iv(protected), subs)
        return self.apply(sample, aux, encrypt=True), aux

    def decrypt(self, ciphertext: bytes | memoryview, aux: SampleAux) -> bytes:
        """The clear sample from ``ciphertext`` and its ``aux`` (the inverse of :meth:`encrypt`;
        also decrypts any other packager's sample given the map it wrote)."""
        return self.apply(ciphertext, aux, encrypt=False)

    def apply(self, data: bytes | memoryview, aux: SampleAux, *, encrypt: bool) -> bytes:
        """Encrypt (or decrypt) ``data`` following ``aux`` exactly: its IV and subsample map."""
        total = sum(s.clear + s.protected for s in aux.subsamples)
        if aux.subsamples and total != len(data):
            raise MalformedMedia(f"subsamples cover {total} bytes of a {len(data)}-byte sample")
        if self.scheme == "cenc":
            return self._ctr(data, aux)
        return self._cbcs(data, aux, encrypt)

    # --- cenc ----------------------------------------------------------------------------------

    def _ctr_xor(self, iv: bytes, data: bytes | memoryview) -> bytes:
        """``data`` XOR the CTR key stream from counter block ``iv`` (8 bytes: IV ‖ 64-bit block
        number from 0; 16 bytes: a 128-bit counter). Short data use the track's one ECB cipher
        over counter blocks built from a template, because creating a pycryptodome cipher per
        sample costs more than enciphering a typical audio frame; long data get a CTR cipher
        of their own (its set-up amortised)."""
        if len(iv) == 8:
            return ctr_xor(self._ecb, self.key, iv, data)
        n = len(data)
        blocks = -(-n // _BLOCK)
        if blocks > _SHORT_BLOCKS and len(iv) == 16:
            return AES.new(self.key, AES.MODE_CTR, nonce=b"", initial_value=iv).encrypt(data)
        if len(iv) == 16:
            start = int.from_bytes(iv, "big")
            counters = b"".join(((start + i) % (1 << 128)).to_bytes(16, "big") for i in range(blocks))
        else:
            raise MalformedMedia(f"cenc IV of {len(iv)} bytes (8 or 16)")
        return _xor(data, self._ecb.encrypt(counters)[:n])

    def _ctr(self, data: bytes | memoryview, aux: SampleAux) -> bytes:
        if not aux.subsamples:
            return self._ctr_xor(aux.iv, data) if data else b""
        view = memoryview(data)
        out = bytearray(data)
        spans = []
        at = 0
        for s in aux.subsamples:
            at += s.clear
            if s.protected:
                spans.append((at, at + s.protected))
            at += s.protected
        if not spans:
            return bytes(out)
        if len(spans) == 1:
            a, b = spans[0]
            out[a:b] = self._ctr_xor(aux.iv, view[a:b])
            return bytes(out)
        # One key stream across the sample's ranges: gather, one XOR, scatter.
        gathered = b"".join(view[a:b] for a, b in spans)
        done = self._ctr_xor(aux.iv, gathered)
        pos = 0
        for a, b in spans:
            out[a:b] = done[pos:pos + b - a]
            pos += b - a
        return bytes(out)

    # --- cbcs ----------------------------------------------------------------------------------

    def _cbcs(self, data: bytes | memoryview, aux: SampleAux, encrypt: bool) -> bytes:
        out = bytearray(data)
        crypt, skip = self.pattern
        if not aux.subsamples:
            self._cbc_range(out, 0, len(out), aux.iv, crypt, skip, encrypt)
            return bytes(out)
        at = 0
        for s in aux.subsamples:
            at += s.clear
            if s.protected >= _BLOCK:
                self._cbc_range(out, at, at + s.protected, aux.iv, crypt, skip, encrypt)
            at += s.protected
        return bytes(out)

    def _cbc_chain(self, blocks: bytearray, iv: bytes, encrypt: bool) -> bytes:
        """CBC over ``blocks`` from ``iv``, on the track's long-lived CBC objects (one per
        direction): their chaining value is whatever block they last produced or consumed,
        so the first block is corrected by that value XOR ``iv`` — the same as a fresh cipher
        from ``iv``, without creating one per subsample."""
        if encrypt:
            if self._cbc_enc is None:
                self._cbc_enc, self._enc_last = AES.new(self.key, AES.MODE_CBC, iv=iv), iv
            blocks[:_BLOCK] = _xor(blocks[:_BLOCK], _xor(self._enc_last, iv))
            done = self._cbc_enc.encrypt(blocks)
            self._enc_last = done[-_BLOCK:]
            return done
        if self._cbc_dec is None:
            self._cbc_dec, self._dec_last = AES.new(self.key, AES.MODE_CBC, iv=iv), iv
        last = bytes(blocks[-_BLOCK:])
        done = bytearray(self._cbc_dec.decrypt(blocks))
        done[:_BLOCK] = _xor(done[:_BLOCK], _xor(self._dec_last, iv))
        self._dec_last = last
        return bytes(done)

    def _cbc_range(self, buf: bytearray, start: int, end: int, iv: bytes, crypt: int, skip: int,
                   encrypt: bool) -> None:
        """Encipher (or decipher) in place the pattern's blocks of ``buf[start:end]`` as one
        CBC chain from ``iv``; a trailing partial block is left alone."""
        nblocks = (end - start) // _BLOCK
        if nblocks == 0:
            return
        if crypt == 0 or skip == 0:                   # no pattern: every whole block
            stop = start + nblocks * _BLOCK
            buf[start:stop] = self._cbc_chain(buf[start:stop], iv, encrypt)
            return
        period = (crypt + skip) * _BLOCK
        if crypt == 1:
            # Blocks at start, start+period, …: gather byte i of each with one strided slice.
            n = -(-nblocks // (crypt + skip))
            last = start + (n - 1) * period
            gathered = bytearray(n * _BLOCK)
            for i in range(_BLOCK):
                gathered[i::_BLOCK] = buf[start + i:last + i + 1:period]
            done = self._cbc_chain(gathered, iv, encrypt)
            for i in range(_BLOCK):
                buf[start + i:last + i + 1:period] = done[i::_BLOCK]
            return
        spans = [start + b * _BLOCK for b in range(nblocks) if b % (crypt + skip) < crypt]
        done = self._cbc_chain(bytearray(b"".join(buf[a:a + _BLOCK] for a in spans)), iv, encrypt)
        for k, a in enumerate(spans):
            buf[a:a + _BLOCK] = done[k * _BLOCK:(k + 1) * _BLOCK]


def codec_of_entry(entry_box: bytes) -> tuple[str, int]:
    """(codec, NAL length size) of a sample entry: ``avc``/``hevc`` with the size from its
    ``avcC``/``hvcC``, or ``vp9``/``aac``/``opus`` (size 0) for ``vp09``/``mp4a``/``Opus``."""
    codec, size, _config = _entry_config(entry_box)
    return codec, size


def _entry_config(entry_box: bytes) -> tuple[str, int, bytes]:
    """(codec, NAL length size, ``avcC``/``hvcC`` payload) of a sample entry (0 and b"" for
    the codecs without NAL units)."""
    h = parse_header(entry_box, 0)
    codec = _ENTRY_CODEC.get(h.type)
    if codec is None:
        raise UnsupportedMedia(f"sample entry {h.name} (avc1, avc3, hvc1, hev1, vp09, mp4a or Opus)")
    if codec not in ("avc", "hevc"):
        return codec, 0, b""
    want = b"avcC" if codec == "avc" else b"hvcC"
    for child in iter_boxes(entry_box, h.payload_start + VISUAL_ENTRY_FIELDS, h.end):
        if child.type == want:
            config = bytes(child.payload(entry_box))
            return codec, nal_length_size_of(config, codec), config
    raise MalformedMedia(f"sample entry {h.name} has no {want.decode()}")


class TrackProtector:
    """What the segmenter calls for one protected track: the protected sample entry for the init
    segment, each sample's encryption, each ``traf``'s ``saiz``/``saio``/``senc``, and the
    ``moov``'s ``pssh`` boxes.

    Build it from the track's sample entry with :meth:`for_sample_entry` (codec, NAL length
    size and the parameter sets that slice headers refer to are read from it). ``extra_pssh`` are further systems' boxes (Widevine, PlayReady…) as
    :class:`~headwater.drm.bmff.protection.Pssh` records, written after the W3C common one.
    """

    def __init__(self, *, scheme: str, key: bytes, kid: bytes, codec: str,
                 nal_length_size: int = 4, iv: bytes | None = None, iv_mode: str = "increment",
                 randbytes: Callable[[int], bytes] = secrets.token_bytes,
                 extra_pssh: tuple[Pssh, ...] = (),
                 slice_headers: SliceHeaderReader | None = None) -> None:
        if not isinstance(kid, (bytes, bytearray)) or len(kid) != 16:
            raise BadKey("a KID must be 16 bytes")
        self.kid = bytes(kid)
        self.encryptor = SampleEncryptor(scheme, key, codec, nal_length_size=nal_length_size,
                                         iv=iv, iv_mode=iv_mode, randbytes=randbytes,
                                         slice_headers=slice_headers)
        self.extra_pssh = tuple(extra_pssh)

    @classmethod
    def for_sample_entry(cls, entry_box: bytes, *, scheme: str, key: bytes, kid: bytes,
                         **kwargs) -> TrackProtector:
        """A protector for the track whose (clear) sample entry is ``entry_box``."""
        codec, nal_length_size, config = _entry_config(entry_box)
        if codec in ("avc", "hevc"):
            kwargs.setdefault("slice_headers", SliceHeaderReader(codec, config))
        return cls(scheme=scheme, key=key, kid=kid, codec=codec,
                   nal_length_size=nal_length_size or 4, **kwargs)

    @property
    def scheme(self) -> str:
        return self.encryptor.scheme

    @property
    def tenc(self) -> Tenc:
        """The track's ``tenc`` defaults: v0 with 8- or 16-byte per-sample IVs for ``cenc``;
        v1 with the pattern (1:9 video, none for audio) and the constant IV for ``cbcs``."""
        e = self.encryptor
        if e.scheme == "cenc":
            return Tenc(0, 1, len(e.iv), self.kid)
        crypt, skip = e.pattern
        return Tenc(1, 1, 0, self.kid, crypt, skip, e.iv)

    def sample_entry(self, entry_box: bytes) -> bytes:
        """``entry_box`` as ``encv``/``enca`` with its ``sinf``."""
        h = parse_header(entry_box, 0)
        if _ENTRY_CODEC.get(h.type) != self.encryptor.codec or h.type not in ENCRYPTED_ENTRY:
            raise UnsupportedMedia(f"sample entry {h.name} is not this track's "
                                   f"{self.encryptor.codec}")
        return protect_sample_entry(entry_box, self.scheme, self.tenc)

    def encrypt(self, sample: bytes | memoryview) -> tuple[bytes, SampleAux]:
        """One sample encrypted, with its auxiliary information (keep it for :meth:`traf_boxes`)."""
        return self.encryptor.encrypt(sample)

    def traf_boxes(self, aux: list[SampleAux], at: int) -> bytes:
        """``saiz``, ``saio``, ``senc`` for a fragment's samples, to be placed at ``moof``-relative
        offset ``at`` inside the ``traf`` (after ``trun``)."""
        return aux_boxes(aux, self.scheme, at)

    def pssh_boxes(self) -> bytes:
        """The ``moov``'s ``pssh`` boxes: the W3C common one (v1, listing the KID), then any
        configured ones."""
        common = pssh_box(Pssh(COMMON_SYSTEM_ID, (self.kid,), b"", 1))
        return common + b"".join(pssh_box(p) for p in self.extra_pssh)
