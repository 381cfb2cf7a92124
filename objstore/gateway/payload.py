"""An S3 request body, read as it streams: aws-chunked decoding, SHA-256, MD5 and checksums.

Nothing is trusted until the body has ended: ``Payload.verify()`` then compares what the client
declared (x-amz-content-sha256, Content-MD5, x-amz-checksum-* in a header or a trailer, the
decoded length) with what arrived. The caller writes the bytes as they come and discards them
if verification fails, so a bad upload changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import AsyncIterator, Callable, TypeVar

import anyio

from ..s3 import checksums, chunked, sigv4
from ..s3 import errors as s3e
from .context import Call

__all__ = ["Payload", "CHECKSUM_ALGORITHMS"]

CHECKSUM_ALGORITHMS = ("crc32", "crc32c", "sha1", "sha256", "crc64nvme")
READ_SIZE = 256 * 1024
INLINE_PARSE_BYTES = 64 * 1024  # XML documents up to this size are parsed on the event loop
T = TypeVar("T")


class Payload:
    """The body of one PUT/POST: iterate ``chunks()``, then call ``verify()``."""

    def __init__(self, call: Call, *, max_bytes: int):
        h = call.request.headers
        self.call = call
        # What the signature vouches for, not the header: a presigned request's unsigned
        # x-amz-content-sha256 is ignored (UNSIGNED-PAYLOAD).
        self.mode = call.auth.content_sha256  # type: ignore[attr-defined]
        self.streaming = self.mode.startswith("STREAMING-")
        length_header = h.get("x-amz-decoded-content-length") if self.streaming else h.get("content-length")
        self.declared: int | None = None
        if length_header is not None:
            try:
                self.declared = int(length_header)
            except ValueError:
                raise s3e.InvalidArgument("invalid content length", ArgumentName="Content-Length",
                                          ArgumentValue=length_header) from None
            if self.declared < 0:
                raise s3e.InvalidArgument("invalid content length", ArgumentName="Content-Length",
                                          ArgumentValue=length_header)
        elif call.request.body.content_length is None and self.streaming:
            raise s3e.MissingContentLength()
        if self.declared is not None and self.declared > max_bytes:
            raise s3e.EntityTooLarge(f"Your proposed upload exceeds the maximum allowed size of {max_bytes} bytes",
                                     ProposedSize=str(self.declared), MaxSizeAllowed=str(max_bytes))
        self.max_bytes = max_bytes

        self.content_md5: bytes | None = None
        raw_md5 = h.get("content-md5")
        if raw_md5 is not None:
            try:
                self.content_md5 = base64.b64decode(raw_md5.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise s3e.InvalidDigest(resource=None) from None
            if len(self.content_md5) != 16:
                raise s3e.InvalidDigest()

        # Which checksum the client asked for, and the value if it came as a header.
        self.algorithm: str | None = None
        self.expected_checksum: str | None = None
        for algo in CHECKSUM_ALGORITHMS:
            value = h.get(f"x-amz-checksum-{algo}")
            if value is not None:
                self.algorithm, self.expected_checksum = algo, value.strip()
        trailer = (h.get("x-amz-trailer") or "").strip().lower()
        if trailer.startswith("x-amz-checksum-"):
            self.algorithm = trailer[len("x-amz-checksum-"):]
        sdk_algo = h.get("x-amz-sdk-checksum-algorithm")
        if self.algorithm is None and sdk_algo:
            self.algorithm = sdk_algo.strip().lower()
        if self.algorithm is not None and self.algorithm not in checksums.ALGORITHMS:
            raise s3e.InvalidRequest(f"checksum algorithm {self.algorithm} is not supported")

        self.md5 = hashlib.md5()
        self.checksum = checksums.new_checksum(self.algorithm) if self.algorithm else None
        self.sha256 = None
        if not self.streaming and self.mode != "UNSIGNED-PAYLOAD":
            if len(self.mode) != 64:
                raise s3e.InvalidArgument("x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-* or a SHA-256",
                                          ArgumentName="x-amz-content-sha256", ArgumentValue=self.mode)
            self.sha256 = hashlib.sha256()
        self.decoder = chunked.AwsChunkedDecoder(call.auth, sigv4.payload_mode(self.mode),  # type: ignore[arg-type]
                                                 decoded_length=self.declared) if self.streaming else None
        self.size = 0
        self._done = False
        # Hashing left to whoever consumes the chunks (see ``defer_digests``).
        self._deferred = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The decoded body, piece by piece, hashed as it passes."""
        body = self.call.request.body
        while True:
            raw = await body.receive(READ_SIZE)
            if not raw:
                break
            pieces = self.decoder.feed(raw) if self.decoder else [raw]
            for piece in pieces:
                if piece:
                    yield self._account(piece)
        if self.decoder:
            self.decoder.finish()
        self._done = True

    def _account(self, piece: bytes) -> bytes:
        self.size += len(piece)
        if self.size > self.max_bytes:
            raise s3e.EntityTooLarge(ProposedSize=str(self.size), MaxSizeAllowed=str(self.max_bytes))
        if not self._deferred:
            self.digest(piece)
        return piece

    def digest(self, data: bytes | memoryview) -> None:
        """Feed ``data`` to the hashes ``verify`` checks and the ETag comes from."""
        for update in self._updates():
            update(data)

    def _updates(self) -> tuple[Callable[[bytes | memoryview], None], ...]:
        hashes = (self.md5, self.sha256, self.checksum)
        return tuple(h.update for h in hashes if h is not None)

    def defer_digests(self) -> tuple[Callable[[bytes | memoryview], None], ...]:
        """Stop hashing in ``chunks()``: the caller promises to pass every chunk, in order, to
        each function returned (the MD5's, the payload SHA-256's, the checksum's ``update``)
        before it calls ``verify`` or reads the ETag. The object writer feeds them on a worker
        thread a batch of stripes at a time (``LayoutWriter(digests=...)``), so the MD5 and
        SHA-256 of a large PUT run behind the erasure code and the sends, not in front of them."""
        self._deferred = True
        return self._updates()

    async def read_all(self) -> bytes:
        out = bytearray()
        async for piece in self.chunks():
            out += piece
        self.verify()
        return bytes(out)

    async def read_document(self, parse: Callable[[bytes], T]) -> T:
        """The whole body, verified, then ``parse``d (an ``xmlio.parse_*``). defusedxml parses
        in pure Python (a 10,000-part CompleteMultipartUpload takes ~0.4 s), so a large body is
        parsed in a worker thread rather than stalling every other request of this worker."""
        body = await self.read_all()
        if len(body) <= INLINE_PARSE_BYTES:
            return parse(body)
        return await anyio.to_thread.run_sync(parse, body)

    def verify(self) -> None:
        """Raise the S3 error for the first declaration the body does not match."""
        if self.declared is not None and self.size != self.declared:
            raise s3e.IncompleteBody(
                f"You did not provide the number of bytes specified by the Content-Length HTTP header "
                f"({self.size} of {self.declared})")
        if self.sha256 is not None and self.sha256.hexdigest() != self.mode.lower():
            raise s3e.XAmzContentSHA256Mismatch(
                ClientComputedContentSHA256=self.mode, S3ComputedContentSHA256=self.sha256.hexdigest())
        if self.content_md5 is not None and self.md5.digest() != self.content_md5:
            raise s3e.BadDigest()
        if self.checksum is not None and self.algorithm is not None:
            expected = self.expected_checksum
            if expected is None and self.decoder is not None:
                expected = self.decoder.checksums.get(self.algorithm)
            actual = self.checksum.b64()
            if expected is not None and expected != actual:
                raise s3e.BadDigest(f"The {self.algorithm.upper()} you specified did not match the calculated checksum.")

    @property
    def etag(self) -> str:
        return f'"{self.md5.hexdigest()}"'

    def checksums(self) -> dict[str, str]:
        if self.checksum is None or self.algorithm is None:
            return {}
        return {self.algorithm: self.checksum.b64()}
