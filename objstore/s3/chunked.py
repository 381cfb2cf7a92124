"""Incremental, sans-IO decoder for the ``aws-chunked`` content encoding.

Framing (after any HTTP/1.1 ``Transfer-Encoding: chunked`` has been removed by the core)::

    <hex-size>[;chunk-signature=<64 hex>]\\r\\n<data>\\r\\n      (repeated)
    0[;chunk-signature=<64 hex>]\\r\\n                          (the final, empty chunk)
    [<name>:<value>\\r\\n ...]                                   (trailer, TRAILER modes only)
    \\r\\n

Signed chunks chain: the signature of chunk *n* signs
``AWS4-HMAC-SHA256-PAYLOAD\\n{date}\\n{scope}\\n{sig n-1}\\n{sha256("")}\\n{sha256(chunk n)}``,
starting from the seed (request) signature; a signed trailer ends with
``x-amz-trailer-signature`` over ``AWS4-HMAC-SHA256-TRAILER\\n{date}\\n{scope}\\n{last chunk
sig}\\n{sha256(canonical trailer lines)}``.

``feed()`` returns decoded payload pieces as soon as they arrive, *before* the chunk they belong
to is verified: an error from a later ``feed()`` or from ``finish()`` means the whole body must be
discarded. Data bytes are sliced straight out of the fed buffer (never re-buffered), so cost is
linear in the body size whatever the feed sizes.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from .errors import IncompleteBody, InvalidRequest, SignatureDoesNotMatch
from .sigv4 import EMPTY_SHA256, AuthResult, PayloadMode, sign

__all__ = ["AwsChunkedDecoder", "MAX_LINE_BYTES", "MAX_TRAILER_BYTES"]

MAX_LINE_BYTES = 4096          # one chunk header line
MAX_TRAILER_BYTES = 16 * 1024  # every trailer line together

_HEADER = re.compile(rb"([0-9A-Fa-f]{1,16})((?:;[^\r\n]*)?)")
_SIG_EXT = re.compile(rb";chunk-signature=([0-9a-f]{64})")

# decoder states
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class AwsChunkedDecoder:
    """Decode (and for signed modes verify) an ``aws-chunked`` body fed in arbitrary pieces.

    ``mode`` is the request's :class:`PayloadMode` (one of the three streaming modes); signed
    modes need ``auth``. ``decoded_length`` is ``x-amz-decoded-content-length`` when sent.
    After ``finish()``: ``trailers`` (lower-case names, signature excluded) and ``checksums``
    (``{"crc32": "<base64>", ...}`` from ``x-amz-checksum-*`` trailers).
    """

    def __init__(self, auth: AuthResult | None, mode: PayloadMode, *,
                 decoded_length: int | None = None) -> None:
        if not mode.aws_chunked:
            raise ValueError(f"{mode} is not an aws-chunked payload mode")
        if mode.signed_chunks and auth is None:
            raise ValueError("signed aws-chunked payloads need the request's AuthResult")
        self.mode = mode
        self._auth = auth
        self._signed = mode.signed_chunks
        self._trailer_mode = mode.has_trailer
        self.decoded_length = decoded_length
        self.decoded_bytes = 0
        self.trailers: dict[str, str] = {}
        self._trailer_lines: list[tuple[str, str]] = []
        self._trailer_size = 0
        self._trailer_signature: str | None = None
        self._state = _SIZE
        self._line = bytearray()
        self._remaining = 0          # data bytes left in the current chunk
        self._end_left = b""         # bytes of the CRLF after data still expected
        self._chunk_sig: str | None = None
        self._prev_sig = auth.seed_signature if auth is not None else ""
        self._hash = hashlib.sha256() if self._signed else None
        self._last = False           # the current chunk is the final, zero-length one

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def checksums(self) -> dict[str, str]:
        p = "x-amz-checksum-"
        return {k[len(p):]: v for k, v in self.trailers.items() if k.startswith(p)}

    # --- input ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - pos)
                piece = data[pos:pos + take]
                pos += take
                self._remaining -= take
                if self._hash is not None:
                    self._hash.update(piece)
                out.append(piece)
                if self._remaining == 0:
                    self._state, self._end_left = _DATA_END, b"\r\n"
            elif state == _DATA_END:
                need = self._end_left
                take = min(len(need), n - pos)
                if data[pos:pos + take] != need[:take]:
                    raise IncompleteBody("aws-chunked chunk data is not followed by CRLF; the chunk "
                                         "is longer than its declared size")
                pos += take
                self._end_left = need[take:]
                if not self._end_left:
                    self._end_chunk()
            elif state == _SIZE or state == _TRAILER:
                nl = data.find(b"\n", pos)
                end = n if nl < 0 else nl + 1
                self._line += data[pos:end]
                pos = end
                if len(self._line) > MAX_LINE_BYTES:
                    raise InvalidRequest("aws-chunked framing line is too long")
                if nl >= 0:
                    line = bytes(self._line)
                    self._line.clear()
                    if not line.endswith(b"\r\n"):
                        raise InvalidRequest("aws-chunked framing lines must end with CRLF")
                    if state == _SIZE:
                        self._chunk_header(line[:-2])
                    else:
                        self._trailer_line(line[:-2])
            else:  # _DONE
                if data[pos:].strip(b"\r\n"):
                    raise InvalidRequest("unexpected data after the end of the aws-chunked body")
                pos = n
        return out

    def finish(self) -> dict[str, str]:
        """Declare the body complete; returns the trailers. Raises IncompleteBody if truncated."""
        if self._state != _DONE:
            raise IncompleteBody("The request body ended before the final aws-chunked chunk")
        if self.decoded_length is not None and self.decoded_bytes != self.decoded_length:
            raise IncompleteBody(f"x-amz-decoded-content-length is {self.decoded_length} but the "
                                 f"body decodes to {self.decoded_bytes} bytes")
        return self.trailers

    # --- framing -------------------------------------------------------------------------------

    def _chunk_header(self, line: bytes) -> None:
        m = _HEADER.fullmatch(line)
        if not m:
            raise IncompleteBody("aws-chunked chunk header is malformed")
        size = int(m.group(1), 16)
        ext = m.group(2)
        if self._signed:
            sm = _SIG_EXT.fullmatch(ext)
            if not sm:
                raise IncompleteBody("aws-chunked chunk header lacks a valid chunk-signature")
            self._chunk_sig = sm.group(1).decode("ascii")
        self.decoded_bytes += size
        if self.decoded_length is not None and self.decoded_bytes > self.decoded_length:
            raise IncompleteBody(f"the aws-chunked body is longer than x-amz-decoded-content-length "
                                 f"({self.decoded_length})")
        self._remaining = size
        self._last = size == 0
        if size:
            self._state = _DATA
        elif self._trailer_mode:
            self._verify_chunk()
            self._state = _TRAILER
        else:
            self._state, self._end_left = _DATA_END, b"\r\n"

    def _end_chunk(self) -> None:
        if self._last:            # the CRLF closing a body without trailer
            self._verify_chunk()
            self._state = _DONE
        else:
            self._verify_chunk()
            self._state = _SIZE

    def _verify_chunk(self) -> None:
        if not self._signed:
            return
        assert self._auth is not None and self._hash is not None and self._chunk_sig is not None
        sts = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", self._auth.amz_date, self._auth.scope,
                         self._prev_sig, EMPTY_SHA256, self._hash.hexdigest()))
        expected = sign(self._auth.signing_key, sts)
        if not hmac.compare_digest(expected, self._chunk_sig):
            raise SignatureDoesNotMatch("The chunk signature we calculated does not match the "
                                        "signature you provided.",
                                        StringToSign=sts, SignatureProvided=self._chunk_sig)
        self._prev_sig = self._chunk_sig
        self._hash = hashlib.sha256()

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._finish_trailer()
            return
        self._trailer_size += len(line) + 2
        if self._trailer_size > MAX_TRAILER_BYTES:
            raise InvalidRequest("the aws-chunked trailer is too large")
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise InvalidRequest("aws-chunked trailer line is malformed")
        try:
            key = name.strip().decode("ascii").lower()
            text = value.strip().decode("latin-1")
        except UnicodeDecodeError:
            raise InvalidRequest("aws-chunked trailer name is not ASCII") from None
        if key == "x-amz-trailer-signature":
            if self._trailer_signature is not None:
                raise InvalidRequest("duplicate x-amz-trailer-signature")
            self._trailer_signature = text
        else:
            if self._trailer_signature is not None:
                raise InvalidRequest("x-amz-trailer-signature must be the last trailer line")
            self._trailer_lines.append((key, text))
            self.trailers[key] = text

    def _finish_trailer(self) -> None:
        if self._signed:
            assert self._auth is not None
            if self._trailer_signature is None:
                raise SignatureDoesNotMatch("The signed aws-chunked trailer lacks "
                                            "x-amz-trailer-signature")
            canonical = "".join(f"{k}:{' '.join(v.split())}\n" for k, v in sorted(self._trailer_lines))
            sts = "\n".join(("AWS4-HMAC-SHA256-TRAILER", self._auth.amz_date, self._auth.scope,
                             self._prev_sig, hashlib.sha256(canonical.encode("utf-8")).hexdigest()))
            expected = sign(self._auth.signing_key, sts)
            if not hmac.compare_digest(expected, self._trailer_signature):
                raise SignatureDoesNotMatch("The trailer signature we calculated does not match "
                                            "the signature you provided.",
                                            StringToSign=sts,
                                            SignatureProvided=self._trailer_signature)
        self._state = _DONE
