"""The minimum send rate of one TCP connection: ``min_send_rate_bytes_per_s`` over each window of
``min_send_rate_window_s`` spent with our sends blocked on the peer.

``send_timeout_s`` only catches a peer that takes nothing at all: one that reads a few bytes every
few seconds (a tiny receive window, a byte read now and then) makes progress inside every send
timeout and so held a response, and whatever the response pins (an edge cache object, a
collapsed fetch), for as long as it liked. This is the socket-level twin of the HTTP/2 window
floor (``H2Shell._send_data``), and like it reuses ``guards.RateFloor``: only the time a send is
blocked counts, so a slow app never makes a client look slow.

Progress is what the peer acknowledged (the kernel's ``tcpi_bytes_acked``, TCP_INFO), not what
the kernel accepted into its send buffer: a buffer of a few MiB would otherwise be credited as
if the peer had read it. The counter is read once per window of blocked time (and at the
connection's first block), not once per blocked send, so a fast large download, which blocks
every few dozen KiB, pays a few float operations per block. ``SocketStream`` calls ``blocked``
and ``unblocked`` around its waits for writability, ``ProtocolStream`` from the loop's
``pause_writing`` / ``resume_writing``; the ``Watchdog`` calls ``due`` once ``deadline`` passes
with the send still blocked, and cuts the connection when it answers False.
"""

from __future__ import annotations

import math
import socket
import struct

from headwater.config import HttpLimits
from headwater.http.guards import RateFloor

__all__ = ["SendFloor", "bytes_acked"]

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 after 104 bytes of older fields and
# tcpi_pacing_rate / tcpi_max_pacing_rate (Linux 4.1+).
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120
_TCP_INFO_BYTES = _BYTES_ACKED_AT + _BYTES_ACKED.size
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def bytes_acked(sock: socket.socket) -> int | None:
    """Bytes of ours the peer of the TCP socket ``sock`` acknowledged so far; None where the
    kernel does not say (not Linux, not TCP, a kernel before 4.1, a closed socket)."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_BYTES)
    except OSError:
        return None
    if len(info) < _TCP_INFO_BYTES:
        return None
    return _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0]


class SendFloor:
    """``RateFloor`` over the blocked sends of one TCP socket, progress counted in acked bytes.

    ``deadline`` (time.monotonic) is the moment the current blocked wait breaks the floor unless
    the peer acknowledged enough by then; infinite while nothing is blocked.
    """

    __slots__ = ("_sock", "_floor", "_acked", "deadline")

    def __init__(self, sock: socket.socket, bytes_per_s: float, window_s: float) -> None:
        self._sock = sock
        self._floor = RateFloor(bytes_per_s, window_s)
        self._acked: int | None = None  # the counter when last read
        self.deadline = math.inf

    @classmethod
    def for_limits(cls, sock: socket.socket, limits: HttpLimits) -> SendFloor | None:
        """The floor ``limits`` put on ``sock``; None when it is off or ``sock`` is not TCP."""
        if not limits.min_send_rate_bytes_per_s or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return cls(sock, limits.min_send_rate_bytes_per_s, limits.min_send_rate_window_s)

    def _progress(self) -> int:
        """Bytes acked since the last read of the counter (0 where the kernel does not say)."""
        acked = bytes_acked(self._sock)
        if acked is None:
            return 0
        before, self._acked = self._acked, acked
        return 0 if before is None else acked - before

    def blocked(self, now: float) -> None:
        """A send starts waiting for the peer at ``now``."""
        if self._acked is None:
            # The baseline, at the first block: a connection whose sends never block never
            # pays for the system call.
            self._acked = bytes_acked(self._sock)
            if self._acked is None:
                return  # the kernel cannot tell: no floor (send_timeout_s still applies)
        self.deadline = self._floor.begin_wait(now)

    def unblocked(self, now: float) -> bool:
        """The send stopped waiting at ``now``; False if the peer is below the floor."""
        if self.deadline == math.inf:
            return True
        self.deadline = math.inf
        floor = self._floor
        # The acked bytes matter only when a window of waiting closes, so only then are they read.
        return floor.end_wait(self._progress() if floor.window_ends_by(now) else 0, now)

    def due(self, now: float) -> bool:
        """The send is still blocked at ``now``, past ``deadline``: False if the window that
        closed saw too few bytes acked (cut the connection), else ``deadline`` moves on."""
        floor = self._floor
        if not floor.end_wait(self._progress(), now):
            self.deadline = math.inf
            return False
        self.deadline = floor.begin_wait(now)
        return True
