"""Reading what an HTTP/2 server sent, frame by frame, for tests that speak raw HTTP/2."""

from __future__ import annotations

__all__ = ["frames_of"]


def frames_of(out: bytes) -> list[tuple[int, int, bytes]]:
    """(type, stream id, payload) of each whole frame in ``out``; a partial frame at the end is
    left out."""
    frames, pos = [], 0
    while pos + 9 <= len(out):
        n = int.from_bytes(out[pos:pos + 3], "big")
        frames.append((out[pos + 3], int.from_bytes(out[pos + 5:pos + 9], "big"), out[pos + 9:pos + 9 + n]))
        pos += 9 + n
    return frames
