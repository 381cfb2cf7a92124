"""Response rate limiting (RRL) against DNS reflection, as BIND and Knot do it. Sans-IO.

An open authoritative server is a reflector: an attacker sends small queries with the victim's
address as the source and the server sends the (larger) answers to the victim. RRL counts the
responses the server is about to send to each *client prefix* (/24 for IPv4, /56 for IPv6 by
default: a spoofer controls the low bits, and one victim network is one account) per *kind of
response* and *name*, and stops answering an account that goes over its rate.

The accounting is BIND's "credit" scheme (ARM, ``rate-limit``): each account earns
``responses_per_second`` credits per second and never holds more than one second's worth; every
prospective response debits one, even when it is then withheld; while the balance is negative
responses are withheld; the balance never falls below ``-window_seconds * rate``, so after a flood
stops the account answers again within ``window_seconds``. A withheld response is either dropped
or *slipped*: every ``slip``-th withheld response of an account is sent as an empty truncated
(TC=1) reply, so a real resolver behind a spoofed prefix retries over TCP (which is never
limited) and gets its answer, while the reflected volume is at most 1/slip of the queries, each
no larger than the query. ``slip = 0`` always drops, ``slip = 1`` always slips.

Accounts (``kind`` -> rate, and what names it):

| kind | rate | bucket per prefix and |
|---|---|---|
| answer, nodata, referral | responses_per_second | qname (lower-cased: 0x20 case randomisation is one name) |
| nxdomain | nxdomains_per_second | zone (every NXDOMAIN of a zone shares one account, so random subdomains do not evade it) |
| error | errors_per_second | nothing: all errors to a prefix (REFUSED for foreign zones, FORMERR, ...) share one account |

A rate of 0 leaves that kind unlimited (as BIND).

Bounded memory: the table holds at most ``max_buckets`` accounts, set-associatively: an
account's *set* of ``WAYS`` slots is chosen by a keyed BLAKE2b hash of its key under a secret
drawn at start (as Knot keys SipHash with a random seed), so nobody outside can aim keys at the
set of a chosen victim. A new account takes a free slot of its set, else evicts the occupant with
the *most credit* (refilled to now, as a fraction of its rate). That choice is what makes eviction
harmless: an account with full credit is indistinguishable from a fresh one (a fresh account
starts with full credit), so evicting it changes no future decision; an account that holds debt
— a victim being limited — is evicted only when every other slot in its set holds more debt. A
spray of random sources (one response each, so each near full credit) therefore only evicts its
own kind: it cannot grow the table, which is preallocated to its bound, and cannot reset a
victim's debt except by flooding, into debt, ``WAYS - 1`` accounts that land in the victim's
secret set, i.e. by the very flood RRL limits. (An LRU would do the opposite: every spoofed
source would push the oldest — the limited victim's — account out.) A legitimate client under its
rate has credit, so when it is evicted it comes back with full credit: never starved.

Time is passed in (``now``, seconds on a monotonic clock); randomness (the hash secret) is
injected. The counters (sent, dropped, slipped, evictions) feed ``/metrics``.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from headwater.config import Reader

__all__ = [
    "Verdict",
    "RrlConfig",
    "RrlStatistics",
    "ResponseRateLimiter",
    "read_rrl",
    "add_rrl_metrics",
    "KINDS",
    "WAYS",
]

# Slots per set. 8 keeps the miss path (one hash, one scan of 8 slots) cheap and makes aiming
# enough debt-holding accounts at one secret set impractical.
WAYS = 8

KINDS = ("answer", "nxdomain", "nodata", "error", "referral")


class Verdict(enum.Enum):
    """What to do with a UDP response: send it, drop it, or send it truncated and empty."""

    SEND = "send"
    DROP = "drop"
    SLIP = "slip"


SEND, DROP, SLIP = Verdict.SEND, Verdict.DROP, Verdict.SLIP


@dataclass(frozen=True, slots=True, kw_only=True)
class RrlConfig:
    """``[dns.rrl]``: the limits. Rates are responses per second per account; 0 = unlimited."""

    enabled: bool = True
    responses_per_second: float = 20.0
    errors_per_second: float = 20.0
    nxdomains_per_second: float = 20.0
    window_seconds: float = 15.0
    slip: int = 2
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    max_buckets: int = 100_000
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=())


@dataclass(frozen=True, slots=True, kw_only=True)
class RrlStatistics:
    """Counters since start: responses sent, dropped and slipped; accounts held, evicted."""

    sent: int
    dropped: int
    slipped: int
    buckets: int
    capacity: int
    evictions: int


# A bucket is a small list, mutated in place on the hot path:
# [balance, stamp, withheld, rate, key]
_BAL, _STAMP, _WITHHELD, _RATE, _KEY = range(5)


class ResponseRateLimiter:
    """Decides, per UDP response, whether to send, drop or slip it (see the module docstring).

    ``secret`` keys the hash that places accounts in sets; pass bytes from the daemon's
    randomness (16 bytes from ``os.urandom`` when omitted). One instance per worker process.
    """

    def __init__(self, config: RrlConfig, *, secret: bytes | None = None) -> None:
        self.config = config
        self._secret = secret if secret is not None else os.urandom(16)
        if not 1 <= len(self._secret) <= 64:
            raise ValueError("the RRL hash secret must be 1..64 bytes")
        ways = min(WAYS, config.max_buckets)
        self._ways = ways
        self._nsets = max(1, config.max_buckets // ways)
        self.capacity = self._nsets * ways
        self._sets: list[list[list]] = [[] for _ in range(self._nsets)]
        # A keyed BLAKE2b prototype: copy() per miss is cheaper than re-keying.
        self._blake = hashlib.blake2b(key=self._secret, digest_size=8)
        self._buckets: dict[tuple, list] = {}
        self._rates = {
            "answer": float(config.responses_per_second),
            "nodata": float(config.responses_per_second),
            "referral": float(config.responses_per_second),
            "nxdomain": float(config.nxdomains_per_second),
            "error": float(config.errors_per_second),
        }
        self._floor = float(config.window_seconds)  # debt limit, in seconds of rate
        self._slip = config.slip
        self._mask4 = (0xFFFFFFFF << (32 - config.ipv4_prefix)) & 0xFFFFFFFF
        self._mask6 = ((1 << 128) - 1) ^ ((1 << (128 - config.ipv6_prefix)) - 1)
        self._exempt = config.exempt
        self.sent = 0
        self.dropped = 0
        self.slipped = 0
        self.evictions = 0

    # --- the hot path ----------------------------------------------------------------------------

    def decide(self, client_ip: str, kind: str, qname: str, now: float, *, zone: str = "") -> Verdict:
        """The verdict for one UDP response of ``kind`` for ``qname`` to ``client_ip`` at ``now``.

        ``zone`` names the zone an NXDOMAIN came from (its account); without it every NXDOMAIN to
        the prefix shares one account. Raises ValueError for an unknown ``kind`` or address.
        """
        rate = self._rates.get(kind)
        if rate is None:
            raise ValueError(f"unknown response kind {kind!r} (known: {', '.join(KINDS)})")
        if not self.config.enabled or rate <= 0.0:
            self.sent += 1
            return SEND
        family, net = self._prefix(client_ip)
        if self._exempt and self._is_exempt(client_ip):
            self.sent += 1
            return SEND
        if kind == "error":
            name = ""
        elif kind == "nxdomain":
            name = zone.lower()
        else:
            name = qname.lower()
        key = (family, net, kind, name)
        b = self._buckets.get(key)
        if b is None:
            b = self._insert(key, rate, now)
        else:
            dt = now - b[_STAMP]
            if dt > 0.0:
                bal = b[_BAL] + rate * dt
                b[_BAL] = rate if bal > rate else bal
                b[_STAMP] = now
        bal = b[_BAL] - 1.0
        floor = -self._floor * rate
        b[_BAL] = floor if bal < floor else bal
        if bal >= 0.0:
            self.sent += 1
            return SEND
        b[_WITHHELD] += 1
        slip = self._slip
        if slip and b[_WITHHELD] % slip == 0:
            self.slipped += 1
            return SLIP
        self.dropped += 1
        return DROP

    def _prefix(self, client_ip: str) -> tuple[int, int]:
        """(4 or 6, the address masked to its prefix). IPv4-mapped IPv6 counts as IPv4."""
        try:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, client_ip), "big") & self._mask4
        except OSError:
            pass
        try:
            raw = socket.inet_pton(socket.AF_INET6, client_ip.split("%", 1)[0])
        except OSError:
            raise ValueError(f"not an IP address: {client_ip!r}") from None
        if raw[:12] == b"\0" * 10 + b"\xff\xff":
            return 4, int.from_bytes(raw[12:], "big") & self._mask4
        return 6, int.from_bytes(raw, "big") & self._mask6

    def _is_exempt(self, client_ip: str) -> bool:
        addr = ipaddress.ip_address(client_ip.split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._exempt if net.version == addr.version)

    # --- the bounded table -----------------------------------------------------------------------

    def _hash(self, data: bytes) -> Any:
        h = self._blake.copy()
        h.update(data)
        return h

    def _set_of(self, key: tuple) -> int:
        family, net, kind, name = key
        data = b"%d|%d|%s|%s" % (family, net, kind.encode(), name.encode("utf-8", "surrogateescape"))
        return int.from_bytes(self._hash(data).digest(), "little") % self._nsets

    def _insert(self, key: tuple, rate: float, now: float) -> list:
        """A fresh account with full credit, in a free slot of its set or in place of the
        occupant with the most credit (see the module docstring for why that one)."""
        slots = self._sets[self._set_of(key)]
        b = [rate, now, 0, rate, key]
        if len(slots) < self._ways:
            slots.append(b)
        else:
            # Credit as a fraction of a second's worth, refilled to now, is bal/rate + (now -
            # stamp); ``now`` is common to all, so the most credit is the largest bal/rate - stamp.
            # (Any account at full credit is as good as fresh: nothing is lost by evicting it.)
            credits = [o[_BAL] / o[_RATE] - o[_STAMP] for o in slots]
            victim_at = credits.index(max(credits))
            del self._buckets[slots[victim_at][_KEY]]
            slots[victim_at] = b
            self.evictions += 1
        self._buckets[key] = b
        return b

    # --- reporting -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._buckets)

    def statistics(self) -> RrlStatistics:
        """The counters for ``/metrics`` and ``headwater status``."""
        return RrlStatistics(sent=self.sent, dropped=self.dropped, slipped=self.slipped,
                             buckets=len(self._buckets), capacity=self.capacity,
                             evictions=self.evictions)


def add_rrl_metrics(registry: Any, limiter: ResponseRateLimiter | Callable[[], ResponseRateLimiter]) -> None:
    """Register ``hw_dns_rrl_responses_total{verdict}``, ``hw_dns_rrl_evictions_total`` and
    ``hw_dns_rrl_buckets`` on a :class:`headwater.metrics.Registry`, refreshed at each scrape.

    ``limiter`` may be a callable returning the current limiter (a reload may replace it); the
    counters stay monotonic across such a swap.
    """
    responses = registry.counter("hw_dns_rrl_responses_total",
                                 "UDP responses by rate-limiting verdict (sent, dropped, slipped).",
                                 labels=("verdict",))
    evictions = registry.counter("hw_dns_rrl_evictions_total",
                                 "RRL accounts evicted from the full table.")
    buckets = registry.gauge("hw_dns_rrl_buckets", "RRL accounts held (at most max_buckets).")
    seen: dict[tuple[int, str], int] = {}

    def collect() -> None:
        lim = limiter() if callable(limiter) and not isinstance(limiter, ResponseRateLimiter) else limiter
        st = lim.statistics()
        for verdict, value in (("sent", st.sent), ("dropped", st.dropped), ("slipped", st.slipped),
                               ("evictions", st.evictions)):
            last = seen.get((id(lim), verdict), 0)
            if value > last:
                (evictions if verdict == "evictions" else responses.labels(verdict=verdict)).inc(value - last)
            seen[(id(lim), verdict)] = value
        buckets.set(st.buckets)

    registry.add_collector(collect)


# --- configuration -------------------------------------------------------------------------------

_KEYS = {"enabled", "responses_per_second", "errors_per_second", "nxdomains_per_second",
         "window_seconds", "slip", "ipv4_prefix", "ipv6_prefix", "max_buckets", "exempt"}


def _int_in(r: Reader, data: Mapping[str, Any], key: str, p: str, default: int, lo: int, hi: int) -> int:
    value = r.get(data, key, p, int, default)
    if not lo <= value <= hi:
        raise r.error(f"{p}.{key}", f"{value} is outside {lo}..{hi}")
    return value


def read_rrl(r: Reader, table: Mapping[str, Any], prefix: str = "dns.rrl") -> RrlConfig:
    """``[dns.rrl]`` into an :class:`RrlConfig`; errors name the key and its line.

    ``errors_per_second`` and ``nxdomains_per_second`` default to ``responses_per_second``, as in
    BIND. ``window_seconds`` is 1..3600 and ``slip`` 0..10 (BIND's ranges).
    """
    if not isinstance(table, Mapping):
        raise r.error(prefix, "expected a table")
    r.check_keys(table, prefix, _KEYS)
    d = RrlConfig()
    rps = r.non_negative(table, "responses_per_second", prefix, d.responses_per_second)
    window = r.positive(table, "window_seconds", prefix, d.window_seconds)
    if not 1 <= window <= 3600:
        raise r.error(f"{prefix}.window_seconds", f"{window:g} is outside 1..3600")
    raw_exempt = r.get(table, "exempt", prefix, list, [])
    exempt = []
    for i, item in enumerate(raw_exempt):
        if not isinstance(item, str):
            raise r.error(f"{prefix}.exempt", f"item {i + 1}: expected a CIDR string such as \"10.0.0.0/8\"")
        try:
            exempt.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise r.error(f"{prefix}.exempt", f"item {i + 1}: {e}") from None
    return RrlConfig(
        enabled=r.get(table, "enabled", prefix, bool, d.enabled),
        responses_per_second=rps,
        errors_per_second=r.non_negative(table, "errors_per_second", prefix, rps),
        nxdomains_per_second=r.non_negative(table, "nxdomains_per_second", prefix, rps),
        window_seconds=window,
        slip=_int_in(r, table, "slip", prefix, d.slip, 0, 10),
        ipv4_prefix=_int_in(r, table, "ipv4_prefix", prefix, d.ipv4_prefix, 1, 32),
        ipv6_prefix=_int_in(r, table, "ipv6_prefix", prefix, d.ipv6_prefix, 1, 128),
        max_buckets=_int_in(r, table, "max_buckets", prefix, d.max_buckets, 1, 100_000_000),
        exempt=tuple(exempt),
    )
