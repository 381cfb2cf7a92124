"""Budgets against abusive peers, sans-IO: no sockets, no sleeping; time is passed in or injected.

``FloodBudget`` is a token bucket for frames that are cheap for a client and costly for the
server (HTTP/2 RST_STREAM of a stream the server took on, PING, SETTINGS, PRIORITY, empty DATA):
``spend`` answers False once the bucket is empty, and the HTTP/2 connection then says GOAWAY
(ENHANCE_YOUR_CALM) and closes, as nginx and h2o do against rapid reset (CVE-2023-44487) and
the 2019 control-frame floods (CVE-2019-9512, -9514, -9515, -9518).

``RateFloor`` is a minimum average rate for a request body (Apache mod_reqtimeout's MinRate),
and for what a peer takes of our sends (an HTTP/2 stream's windows, a socket's acked bytes: see
``send_floor``): only the time spent waiting on the peer counts, so a slow app never makes a
client look slow.
"""

from __future__ import annotations

from headwater.clock import SYSTEM_CLOCK, Clock

__all__ = ["FloodBudget", "RateFloor"]


class FloodBudget:
    """A token bucket of ``burst`` tokens, refilled at ``rate_per_s`` on the injected clock."""

    __slots__ = ("rate_per_s", "burst", "_clock", "_tokens", "_at")

    def __init__(self, rate_per_s: float, burst: int, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if rate_per_s < 0 or burst < 1:
            raise ValueError("a flood budget needs rate_per_s >= 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock.monotonic()

    def spend(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens; False (and nothing taken) when the budget is exhausted."""
        now = self._clock.monotonic()
        tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if tokens < cost:
            self._tokens = tokens
            return False
        self._tokens = tokens - cost
        return True

    @property
    def tokens(self) -> float:
        """Tokens left as of the last ``spend`` (for tests and statistics)."""
        return self._tokens


class RateFloor:
    """At least ``bytes_per_s`` over every ``window_s`` seconds spent waiting on the peer.

    The shell calls ``begin_wait(now)`` before it waits for body bytes (the answer is the latest
    moment that wait may end without breaking the floor) and ``end_wait(nbytes, now)`` after it;
    False from ``end_wait`` means the body is too slow. Windows are consecutive: one that ends
    with fewer than ``bytes_per_s * window_s`` bytes fails. ``bytes_per_s = 0`` disables it.
    """

    __slots__ = ("bytes_per_s", "window_s", "_need", "_waited", "_bytes", "_since")

    def __init__(self, bytes_per_s: float, window_s: float) -> None:
        if bytes_per_s < 0 or window_s <= 0:
            raise ValueError("a rate floor needs bytes_per_s >= 0 and window_s > 0")
        self.bytes_per_s = bytes_per_s
        self.window_s = window_s
        self._need = bytes_per_s * window_s
        self._waited = 0.0
        self._bytes = 0
        self._since = 0.0

    def reset(self) -> None:
        """A new body: nothing waited, nothing received."""
        self._waited = 0.0
        self._bytes = 0

    def begin_wait(self, now: float) -> float:
        """A wait for body bytes starts at ``now``; the deadline the floor puts on it."""
        self._since = now
        if not self._need:
            return float("inf")
        left = self.window_s - self._waited
        if self._bytes >= self._need:
            left += self.window_s  # this window has passed already; the next one may fail
        return now + left

    def end_wait(self, nbytes: int, now: float) -> bool:
        """The wait ended at ``now`` with ``nbytes`` bytes; False if the floor was broken."""
        self._waited += max(0.0, now - self._since)
        self._bytes += nbytes
        while self._waited >= self.window_s:
            if self._bytes < self._need:
                return False
            self._waited -= self.window_s
            self._bytes = 0
        return True

    def window_ends_by(self, now: float) -> bool:
        """Whether a wait begun at the last ``begin_wait`` and ending at ``now`` closes a window:
        only then does ``end_wait`` look at the bytes (a caller whose count costs a system call
        may pass 0 otherwise, and the sum at the window's end)."""
        return self._waited + max(0.0, now - self._since) >= self.window_s
