"""Request bodies as the HTTP core hands them to an app, for tests that call an app directly."""

from __future__ import annotations


class MemoryBody:
    """A request body from bytes in memory, handed out in pieces of at most ``max_bytes``."""

    content_length = None
    expects_continue = False

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def receive(self, max_bytes: int = 65536) -> bytes:
        chunk, self.data = self.data[:max_bytes], self.data[max_bytes:]
        return chunk
