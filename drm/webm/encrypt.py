"""WebM Encryption (webmproject.org/docs/webm-encryption): how a track says its frames are
encrypted, and the frames themselves. Sans-IO.

A track's ``TrackEntry`` carries ``ContentEncodings`` / ``ContentEncoding`` (scope 1: the
frames; type 1: encryption) / ``ContentEncryption`` with ``ContentEncAlgo`` 5 (AES),
``ContentEncKeyID`` (the KID the licence is asked for: a browser's ``encrypted`` event carries
it as "webm" init data) and ``ContentEncAESSettings`` / ``AESSettingsCipherMode`` 1 (CTR).

Every frame of such a track starts with a signal byte. An encrypted frame is ``0x01``, an
8-byte IV, then the whole frame encrypted with AES-128-CTR, the counter block being the IV
followed by 8 zero bytes (the block counter); a clear frame is ``0x00`` and the frame as is.
This writer encrypts every frame whole (no subsample partitions: VP9 and Opus decoders get
the frame after decryption, nothing of it need be read before). IVs: a random 8-byte start
per track, then one more per frame, so no two frames of a track share a counter block (and
two tracks under one key collide only if their random starts fall within a title's frame
count of each other: 2^-64 odds per frame).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from Crypto.Cipher import AES

from headwater.drm.errors import BadKey, MalformedMedia
from headwater.drm.package.encrypt import ctr_xor

from . import ebml
from .ids import (AES_SETTINGS_CIPHER_MODE, CONTENT_ENC_AES_SETTINGS, CONTENT_ENC_ALGO, CONTENT_ENC_KEY_ID,
                  CONTENT_ENCODING, CONTENT_ENCODING_ORDER, CONTENT_ENCODING_SCOPE, CONTENT_ENCODING_TYPE,
                  CONTENT_ENCODINGS, CONTENT_ENCRYPTION)

__all__ = ["SIGNAL_ENCRYPTED", "SIGNAL_CLEAR", "IV_SIZE", "content_encodings", "FrameEncryptor", "decrypt_frame"]

SIGNAL_ENCRYPTED = 0x01
SIGNAL_CLEAR = 0x00
IV_SIZE = 8
ALGO_AES = 5
CIPHER_MODE_CTR = 1


def content_encodings(kid: bytes) -> bytes:
    """The ``ContentEncodings`` element of a track encrypted under ``kid``."""
    return ebml.master(CONTENT_ENCODINGS, ebml.master(
        CONTENT_ENCODING,
        ebml.uint(CONTENT_ENCODING_ORDER, 0),
        ebml.uint(CONTENT_ENCODING_SCOPE, 1),
        ebml.uint(CONTENT_ENCODING_TYPE, 1),
        ebml.master(CONTENT_ENCRYPTION,
                    ebml.uint(CONTENT_ENC_ALGO, ALGO_AES),
                    ebml.element(CONTENT_ENC_KEY_ID, kid),
                    ebml.master(CONTENT_ENC_AES_SETTINGS, ebml.uint(AES_SETTINGS_CIPHER_MODE, CIPHER_MODE_CTR)))))


def _check_key(what: str, value: bytes) -> None:
    if len(value) != 16:
        raise BadKey(f"{what} must be 16 bytes (AES-128), got {len(value)}")


class FrameEncryptor:
    """One track's frame encryption under ``key`` (its KID ``kid`` goes in the track entry)."""

    def __init__(self, key: bytes, kid: bytes, *, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        _check_key("key", key)
        _check_key("KID", kid)
        self.key = key
        self.kid = kid
        self._next_iv = int.from_bytes(random_bytes(IV_SIZE), "big")
        # One long-lived ECB cipher for the track: short frames (Opus) are enciphered as
        # counter blocks through it, since creating a CTR cipher costs more than the frame.
        self._ecb = AES.new(key, AES.MODE_ECB)

    def track_encodings(self) -> bytes:
        """The track entry's ``ContentEncodings``."""
        return content_encodings(self.kid)

    def encrypt(self, frame: bytes | memoryview) -> bytes:
        """``frame`` as an encrypted WebM frame: signal byte, IV, ciphertext."""
        iv = self._next_iv.to_bytes(IV_SIZE, "big")
        self._next_iv = (self._next_iv + 1) % (1 << 64)
        return b"\x01" + iv + ctr_xor(self._ecb, self.key, iv, frame)


def decrypt_frame(key: bytes, data: bytes | memoryview) -> bytes:
    """The clear frame of an encrypted track's frame ``data`` (signal byte first)."""
    _check_key("key", key)
    if not data:
        raise MalformedMedia("WebM: an empty frame in an encrypted track (no signal byte)")
    if data[0] == SIGNAL_CLEAR:
        return bytes(data[1:])
    if data[0] != SIGNAL_ENCRYPTED:
        raise MalformedMedia(f"WebM: signal byte 0x{data[0]:02x} (partitioned or unknown)")
    if len(data) < 1 + IV_SIZE:
        raise MalformedMedia("WebM: an encrypted frame shorter than its IV")
    iv = bytes(data[1:1 + IV_SIZE])
    return AES.new(key, AES.MODE_CTR, nonce=iv, initial_value=0).decrypt(data[1 + IV_SIZE:])
