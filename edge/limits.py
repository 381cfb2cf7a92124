"""Origin protection at the POP: per-client rate limits, connection caps, and a rule list. Sans-IO.

Three checks, all decided before a request costs anything upstream, each answering a
:class:`Decision` (allow, block = 403, limit = 429 with ``Retry-After``):

1. **Connections** (:meth:`Guard.connection_opened` / :meth:`Guard.connection_closed`): at most
   ``max_connections_per_client`` open connections per client prefix; and a rule that blocks by
   address alone (CIDR / country) refuses the connection before a byte is read.
2. **Rules** (:class:`RuleSet`), first match wins: each rule has an action and conditions that
   must all hold — ``paths`` (globs: ``*`` any run, ``?`` one character; matched against the path
   without its query), ``methods``, ``user_agent_contains`` (case-insensitive substrings),
   ``user_agent_regex``, ``cidrs``, ``countries`` (ISO codes, looked up in ``[cdn.geo]``;
   a rule with countries never matches a request whose country is unknown). Within one
   condition any listed value matches. ``allow`` lets the request through without rate limits
   (trusted monitors); ``block`` answers 403; ``limit`` charges the rule's own token bucket per
   client (e.g. ``/login`` at 1 request/s) and answers 429 when it is empty.
3. **Per-client token bucket** (every request no rule allowed): ``requests_per_second`` refill,
   ``burst`` capacity, one bucket per client prefix — /32 for IPv4 and /64 for IPv6 by default (an
   IPv6 host owns a whole /64, so a per-address bucket would be a gift of 2^64 buckets). A request
   takes one token; without one it is answered 429 and ``Retry-After`` says when a token will be
   there. Refused requests take nothing (as nginx's ``limit_req``), so a client that backs off as
   told gets through at the configured rate.

Bounded cost per request: the user agent is cut to ``max_user_agent_chars`` before matching;
regexes run on RE2 (``google-re2``: linear time, no backtracking, a memory cap at compile time),
so no pattern and no header can make one request expensive; path globs are compiled into RE2 too.
Rules are the operator's, the inputs the attacker's: every match is O(rules × input length).

Bounded memory under a spray of sources (the table is the kernel's :mod:`headwater.tokenbucket`): the bucket table holds at most ``max_clients`` buckets,
set-associatively (sets of :data:`WAYS` slots chosen by a keyed BLAKE2b hash with a secret drawn
at start, so nobody outside can aim keys at a chosen set). A new client takes a free slot in its
set, else evicts the bucket holding the *most tokens* (refilled to now, relative to its burst).
That choice makes eviction harmless: a full bucket is indistinguishable from a fresh one (fresh
buckets start full), so evicting it changes no decision; a client being limited (an empty bucket)
is evicted only when every other bucket in its set is emptier. A spray of one-request sources
leaves near-full buckets that only evict each other, and cannot free a flooding client of its
debt. (An LRU would do the opposite: every new spoofed source would push out the oldest entry —
the limited flooder.) Connection counts are exact instead: an entry lives while its client has a
connection open, so the table never holds more entries than open connections, which the HTTP
core caps (``max_connections``); ``max_clients`` bounds it again, refusing connections from new
clients when full.

Time (``now``, monotonic seconds) and the hash secret are injected.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import re2

from headwater.config import Reader
from headwater.tokenbucket import WAYS, RateLimit, TokenBuckets

__all__ = [
    "Action",
    "Decision",
    "RateLimit",
    "Rule",
    "RuleSet",
    "ClientLimits",
    "TokenBuckets",
    "ConnectionCounter",
    "Guard",
    "GuardStatistics",
    "client_prefix",
    "read_client_limits",
    "read_rules",
    "ALLOW",
    "WAYS",
]

_RE2_MAX_MEM = 1 << 20  # per compiled pattern: RE2 refuses patterns whose automaton needs more


class Action(enum.Enum):
    """What to do with a request or connection."""

    ALLOW = "allow"
    BLOCK = "block"
    LIMIT = "limit"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A verdict: ``status`` 403 for block, 429 for limit (with ``retry_after_s``), 0 for allow.

    ``reason`` names what decided: ``rule:<name>``, ``rate``, ``connections``, ``table-full``, or
    ``""`` for a plain allow (metrics count rejected requests by it).
    """

    action: Action
    status: int = 0
    retry_after_s: int | None = None
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.action is Action.ALLOW

    def headers(self) -> list[tuple[str, str]]:
        """Response headers for a refusal (``Retry-After`` on a 429)."""
        return [("retry-after", str(self.retry_after_s))] if self.retry_after_s is not None else []

    def body(self) -> bytes:
        if self.status == 403:
            return b"403 Forbidden: this request is not allowed here\n"
        if self.status == 429:
            return f"429 Too Many Requests: retry after {self.retry_after_s} s\n".encode()
        return b""


ALLOW = Decision(action=Action.ALLOW)


# --- rules ------------------------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One ``[[cdn.rules]]`` entry (see the module docstring). Empty conditions always hold."""

    name: str
    action: Action
    paths: tuple[str, ...] = ()
    methods: frozenset[str] = frozenset()
    user_agent_contains: tuple[str, ...] = ()
    user_agent_regex: str | None = None
    cidrs: tuple[Network, ...] = ()
    countries: frozenset[str] = frozenset()
    rate: RateLimit | None = None

    @property
    def network_only(self) -> bool:
        """Whether the rule looks at nothing but the client's address (decidable per connection)."""
        return not (self.paths or self.methods or self.user_agent_contains or self.user_agent_regex)


def _re2_options() -> Any:
    o = re2.Options()
    o.max_mem = _RE2_MAX_MEM
    o.log_errors = False
    return o


def _glob_to_regex(glob: str) -> str:
    out = []
    for ch in glob:
        out.append(".*" if ch == "*" else "." if ch == "?" else re2.escape(ch))
    return "".join(out)


def compile_regex(pattern: str) -> Any:
    """An RE2 pattern (ValueError when RE2 refuses it: backreferences, lookaround, too big)."""
    try:
        return re2.compile(pattern, _re2_options())
    except re2.error as e:
        msg = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"not an RE2 regular expression: {msg}") from None


class _CompiledRule:
    __slots__ = ("rule", "index", "paths", "methods", "ua_subs", "ua_regex", "nets4", "nets6", "countries")

    def __init__(self, rule: Rule, index: int) -> None:
        self.rule = rule
        self.index = index
        self.paths = (compile_regex("(?s)" + "|".join(f"(?:{_glob_to_regex(p)})" for p in rule.paths))
                      if rule.paths else None)
        self.methods = frozenset(m.upper() for m in rule.methods)
        self.ua_subs = tuple(s.lower() for s in rule.user_agent_contains)
        self.ua_regex = compile_regex(rule.user_agent_regex) if rule.user_agent_regex else None
        # Networks as (network bits, mask) integers: two int operations per check.
        self.nets4 = tuple((int(n.network_address), int(n.netmask)) for n in rule.cidrs if n.version == 4)
        self.nets6 = tuple((int(n.network_address), int(n.netmask)) for n in rule.cidrs if n.version == 6)
        self.countries = frozenset(c.upper() for c in rule.countries)

    def address_matches(self, addr: tuple[int, int] | None, country: str | None) -> bool:
        if self.nets4 or self.nets6:
            if addr is None:
                return False
            version, value = addr
            for net, mask in (self.nets4 if version == 4 else self.nets6):
                if value & mask == net:
                    break
            else:
                return False
        if self.countries and (country is None or country.upper() not in self.countries):
            return False
        return True

    def request_matches(self, method: str, path: str, ua_lower: str, ua: str) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        if self.paths is not None and self.paths.fullmatch(path) is None:
            return False
        if self.ua_subs and not any(s in ua_lower for s in self.ua_subs):
            return False
        if self.ua_regex is not None and self.ua_regex.search(ua) is None:
            return False
        return True


@functools.lru_cache(maxsize=8192)
def _parse_ip(client_ip: str) -> tuple[int, int] | None:
    """(4 or 6, the address as an integer), IPv4-mapped IPv6 as IPv4; None when unparseable.

    Cached (bounded): a keep-alive client's address is parsed once, not per request.
    """
    try:
        addr = ipaddress.ip_address(client_ip.partition("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (addr.version, int(addr))


class RuleSet:
    """The rule list, compiled once; ``match`` returns the first rule whose conditions all hold."""

    def __init__(self, rules: tuple[Rule, ...] | list[Rule], *, max_user_agent_chars: int = 1024) -> None:
        self.rules = tuple(rules)
        self._compiled = tuple(_CompiledRule(r, i) for i, r in enumerate(self.rules))
        self._max_ua = max_user_agent_chars

    def match(self, *, client_ip: str, method: str, path: str, user_agent: str = "",
              country: str | None = None) -> Rule | None:
        """The first matching rule for one request, or None. ``path`` may carry a query (ignored)."""
        if not self._compiled:
            return None
        addr = _parse_ip(client_ip)
        path = path.partition("?")[0]
        ua = user_agent[: self._max_ua]
        ua_lower = ua.lower()
        for c in self._compiled:
            if c.address_matches(addr, country) and c.request_matches(method, path, ua_lower, ua):
                return c.rule
        return None

    def match_connection(self, *, client_ip: str, country: str | None = None) -> Rule | None:
        """The rule that decides every request of a new connection, if the address alone settles
        it: the first rule whose address conditions hold, when it has no other conditions."""
        addr = _parse_ip(client_ip)
        for c in self._compiled:
            if c.address_matches(addr, country):
                return c.rule if c.rule.network_only else None
        return None


# --- clients, buckets, connections ----------------------------------------------------------------

def client_prefix(client_ip: str, *, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> tuple[int, int]:
    """(family, network bits) naming a client for accounting: its /32 or /64 by default.

    IPv4-mapped IPv6 addresses count as IPv4; an unparseable address is one shared client
    (family 0), so garbage cannot mint fresh buckets.
    """
    addr = _parse_ip(client_ip)
    if addr is None:
        return (0, 0)
    version, value = addr
    if version == 4:
        return (4, value >> (32 - ipv4_prefix))
    return (6, value >> (128 - ipv6_prefix))


class ConnectionCounter:
    """Open connections per client key, exact, with at most ``max_entries`` clients tracked."""

    def __init__(self, max_per_client: int, max_entries: int) -> None:
        self.max_per_client = max_per_client
        self.max_entries = max_entries
        self._open: dict[tuple, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def count(self, key: tuple) -> int:
        return self._open.get(key, 0)

    def open(self, key: tuple) -> str:
        """Account a new connection: "" if accepted, else why not ("connections", "table-full")."""
        n = self._open.get(key, 0)
        if n >= self.max_per_client:
            return "connections"
        if n == 0 and len(self._open) >= self.max_entries:
            return "table-full"
        self._open[key] = n + 1
        return ""

    def close(self, key: tuple) -> None:
        """Forget one connection of ``key`` (only for one that ``open`` accepted)."""
        n = self._open.get(key, 0)
        if n <= 1:
            self._open.pop(key, None)
        else:
            self._open[key] = n - 1


# --- the guard --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ClientLimits:
    """``[cdn.client_limits]``: the per-client bucket, prefixes, table sizes and caps."""

    enabled: bool = True
    rate: RateLimit = field(default_factory=lambda: RateLimit(requests_per_s=100.0, burst=200.0))
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    max_clients: int = 100_000
    max_connections_per_client: int = 64
    max_user_agent_chars: int = 1024
    # The request target (path and query) a POP accepts: CloudFront's 8,192 bytes. Longer gets
    # 414 and goes nowhere (checked with enabled = false too: it bounds what goes upstream).
    max_url_bytes: int = 8192


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardStatistics:
    """Counters since start, for ``/metrics``: decisions by reason, table sizes, evictions."""

    allowed: int
    rejected: Mapping[str, int]
    buckets: int
    bucket_capacity: int
    evictions: int
    clients_connected: int


class Guard:
    """The three checks together, for one worker process (see the module docstring)."""

    def __init__(self, limits: ClientLimits, rules: tuple[Rule, ...] | list[Rule] = (), *,
                 secret: bytes | None = None) -> None:
        self.limits = limits
        self.rules = RuleSet(rules, max_user_agent_chars=limits.max_user_agent_chars)
        self.buckets = TokenBuckets(limits.max_clients, secret=secret)
        self.connections = ConnectionCounter(limits.max_connections_per_client, limits.max_clients)
        self._rule_index = {id(r): i for i, r in enumerate(self.rules.rules)}
        self.allowed = 0
        self.rejected: dict[str, int] = {}

    def _key(self, client_ip: str) -> tuple[int, int]:
        return client_prefix(client_ip, ipv4_prefix=self.limits.ipv4_prefix,
                             ipv6_prefix=self.limits.ipv6_prefix)

    def _reject(self, decision: Decision) -> Decision:
        self.rejected[decision.reason] = self.rejected.get(decision.reason, 0) + 1
        return decision

    def connection_opened(self, client_ip: str, *, country: str | None = None) -> Decision:
        """A new connection: refused (BLOCK, the shell closes it) by an address-only block rule,
        the per-client cap or a full table. Pair every allowed one with ``connection_closed``."""
        if not self.limits.enabled:
            return ALLOW
        rule = self.rules.match_connection(client_ip=client_ip, country=country)
        if rule is not None and rule.action is Action.BLOCK:
            return self._reject(Decision(action=Action.BLOCK, status=403, reason=f"rule:{rule.name}"))
        why = self.connections.open(self._key(client_ip))
        if why == "connections":
            return self._reject(Decision(action=Action.LIMIT, status=429, retry_after_s=1, reason=why))
        if why:
            return self._reject(Decision(action=Action.BLOCK, status=503, reason=why))
        return ALLOW

    def connection_closed(self, client_ip: str) -> None:
        if self.limits.enabled:
            self.connections.close(self._key(client_ip))

    def check_request(self, *, client_ip: str, method: str, path: str, now: float,
                      user_agent: str = "", country: str | None = None) -> Decision:
        """The verdict for one request; ``now`` is monotonic seconds."""
        if not self.limits.enabled:
            return ALLOW
        rule = self.rules.match(client_ip=client_ip, method=method, path=path,
                                user_agent=user_agent, country=country)
        key = self._key(client_ip)
        if rule is not None:
            if rule.action is Action.ALLOW:
                self.allowed += 1
                return ALLOW
            if rule.action is Action.BLOCK:
                return self._reject(Decision(action=Action.BLOCK, status=403, reason=f"rule:{rule.name}"))
            assert rule.rate is not None
            wait = self.buckets.take((self._rule_index[id(rule)], key), rule.rate, now)
            if wait > 0.0:
                return self._reject(Decision(action=Action.LIMIT, status=429,
                                             retry_after_s=max(1, math.ceil(wait)), reason=f"rule:{rule.name}"))
        wait = self.buckets.take((-1, key), self.limits.rate, now)
        if wait > 0.0:
            return self._reject(Decision(action=Action.LIMIT, status=429,
                                         retry_after_s=max(1, math.ceil(wait)), reason="rate"))
        self.allowed += 1
        return ALLOW

    def statistics(self) -> GuardStatistics:
        return GuardStatistics(allowed=self.allowed, rejected=dict(self.rejected),
                               buckets=len(self.buckets), bucket_capacity=self.buckets.capacity,
                               evictions=self.buckets.evictions,
                               clients_connected=len(self.connections))


# --- config ------------------------------------------------------------------------------------------

def read_client_limits(r: Reader, data: Mapping[str, Any] | None,
                       prefix: str = "cdn.client_limits") -> ClientLimits:
    """``[cdn.client_limits]``: ``enabled``, ``requests_per_second``, ``burst``, ``ipv4_prefix``,
    ``ipv6_prefix``, ``max_clients``, ``max_connections_per_client``, ``max_user_agent_chars``,
    ``max_url_size``."""
    d = ClientLimits()
    if data is None:
        return d
    if not isinstance(data, dict):
        raise r.error(prefix, "expected a table")
    r.check_keys(data, prefix, {"enabled", "requests_per_second", "burst", "ipv4_prefix", "ipv6_prefix",
                                "max_clients", "max_connections_per_client", "max_user_agent_chars",
                                "max_url_size"})
    rate = r.positive(data, "requests_per_second", prefix, d.rate.requests_per_s)
    burst = r.get(data, "burst", prefix, (int, float), d.rate.burst)
    if burst < 1:
        raise r.error(f"{prefix}.burst", f"{burst} must be at least 1")

    def bits(key: str, default: int, top: int) -> int:
        v = r.get(data, key, prefix, int, default)
        if not 1 <= v <= top:
            raise r.error(f"{prefix}.{key}", f"{v} is outside 1..{top}")
        return v

    def count(key: str, default: int) -> int:
        v = r.get(data, key, prefix, int, default)
        if v < 1:
            raise r.error(f"{prefix}.{key}", f"{v} must be at least 1")
        return v

    return ClientLimits(
        enabled=r.get(data, "enabled", prefix, bool, d.enabled),
        rate=RateLimit(requests_per_s=rate, burst=float(burst)),
        ipv4_prefix=bits("ipv4_prefix", d.ipv4_prefix, 32),
        ipv6_prefix=bits("ipv6_prefix", d.ipv6_prefix, 128),
        max_clients=count("max_clients", d.max_clients),
        max_connections_per_client=count("max_connections_per_client", d.max_connections_per_client),
        max_user_agent_chars=count("max_user_agent_chars", d.max_user_agent_chars),
        max_url_bytes=max(1, r.size(data, "max_url_size", prefix, d.max_url_bytes)),
    )


_RULE_KEYS = {"name", "action", "paths", "methods", "user_agent_contains", "user_agent_regex", "cidrs",
              "countries", "requests_per_second", "burst"}


def _strings(r: Reader, entry: Mapping[str, Any], key: str, prefix: str) -> tuple[str, ...]:
    value = r.get(entry, key, prefix, list, [])
    if not all(isinstance(v, str) and v for v in value):
        raise r.error(f"{prefix}.{key}", "expected an array of non-empty strings")
    return tuple(value)


def read_rules(r: Reader, entries: Any, prefix: str = "cdn.rules") -> tuple[Rule, ...]:
    """``[[cdn.rules]]``, in order: ``name``, ``action`` ("allow" | "block" | "limit"), and the
    conditions ``paths``, ``methods``, ``user_agent_contains``, ``user_agent_regex`` (RE2),
    ``cidrs``, ``countries``; a "limit" rule also takes ``requests_per_second`` and ``burst``."""
    if entries is None:
        return ()
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise r.error(prefix, "expected an array of tables ([[cdn.rules]])")
    rules: list[Rule] = []
    names: set[str] = set()
    for i, e in enumerate(entries):
        r.check_keys(e, prefix, _RULE_KEYS)
        name = r.get(e, "name", prefix, str, f"rule-{i + 1}")
        if name in names:
            raise r.error(f"{prefix}.name", f"rule name {name!r} appears twice")
        names.add(name)
        action_s = r.get(e, "action", prefix, str, required=True)
        try:
            action = Action(action_s)
        except ValueError:
            raise r.error(f"{prefix}.action", f"{action_s!r} is not one of allow, block, limit") from None
        paths = _strings(r, e, "paths", prefix)
        for p in paths:
            if not p.startswith("/") and not p.startswith("*"):
                raise r.error(f"{prefix}.paths", f"path glob {p!r} must start with / or *")
        methods = frozenset(m.upper() for m in _strings(r, e, "methods", prefix))
        ua_subs = _strings(r, e, "user_agent_contains", prefix)
        ua_regex = r.get(e, "user_agent_regex", prefix, str, None)
        if ua_regex is not None:
            try:
                compile_regex(ua_regex)
            except ValueError as exc:
                raise r.error(f"{prefix}.user_agent_regex", str(exc)) from None
        cidrs = []
        for c in _strings(r, e, "cidrs", prefix):
            try:
                cidrs.append(ipaddress.ip_network(c, strict=False))
            except ValueError:
                raise r.error(f"{prefix}.cidrs", f"{c!r} is not an address or CIDR") from None
        countries = _strings(r, e, "countries", prefix)
        for c in countries:
            if len(c) != 2 or not c.isalpha():
                raise r.error(f"{prefix}.countries", f"{c!r} is not a two-letter country code")
        rate = None
        if action is Action.LIMIT:
            rps = r.positive(e, "requests_per_second", prefix, ...)
            burst = r.get(e, "burst", prefix, (int, float), max(1.0, rps))
            if burst < 1:
                raise r.error(f"{prefix}.burst", f"{burst} must be at least 1")
            rate = RateLimit(requests_per_s=rps, burst=float(burst))
        elif "requests_per_second" in e or "burst" in e:
            raise r.error(f"{prefix}.requests_per_second", "only a \"limit\" rule takes a rate")
        rules.append(Rule(name=name, action=action, paths=paths, methods=methods,
                          user_agent_contains=ua_subs, user_agent_regex=ua_regex, cidrs=tuple(cidrs),
                          countries=frozenset(c.upper() for c in countries), rate=rate))
    return tuple(rules)
