"""CloudFront-like cache behaviours: what a path pattern's requests are cached by, and for how long.

A distribution holds an ordered list of behaviours and a default one; a request takes the first
behaviour whose ``path_pattern`` matches its path (``match_behaviour``), else the default. As in
CloudFront, a pattern matches the whole path, case-sensitively; ``*`` matches any run of
characters (``/`` included) and ``?`` exactly one; a pattern without a leading ``/`` is taken as
if it had one; the default behaviour's pattern is ``*``.

Each behaviour says:

* TTLs, as CloudFront applies them (``freshness.freshness_lifetime``): with no ``s-maxage`` /
  ``max-age`` / ``Expires`` from the origin the lifetime is ``default_ttl`` (``None``: RFC 9111's
  heuristic instead); an origin's lifetime is clamped into ``[min_ttl, max_ttl]``; and with
  ``min_ttl > 0`` even ``no-cache`` / ``no-store`` / ``private`` responses are kept for
  ``min_ttl`` (CloudFront's rule: the operator's minimum overrides the origin). An error
  (status >= 400) without an origin lifetime is kept for ``error_ttl`` (CloudFront's error
  caching minimum TTL, 10 s by default) rather than ``default_ttl``: a segment that is not
  published yet must not stay a cached 404 for a day.
* What forms the cache key and what is forwarded upstream: header, cookie and query-string
  policies (``FieldPolicy``: none, an allow-list, all, or all except a deny-list). Whatever is in
  the key is forwarded; ``forward_*`` may add more (sent upstream but not keyed: only safe for
  values the origin never varies its response on, as CloudFront's origin request policies).
* ``compress``: serve gzip/Brotli by ``Accept-Encoding`` (its normalised form joins the key).
* ``prefetch``: how many following segments to warm (0: off).
* ``slice_size``: 0 (off), or fetch and store objects as slices of this many bytes (a power of
  two, 64 KiB .. 64 MiB, ``slices``); an object no bigger than one slice is stored whole.
* ``honour_request_no_cache``: by default a client's ``Cache-Control: no-cache`` / ``max-age=0``
  does not force a trip upstream (CloudFront, Varnish and nginx all ignore it: honouring it lets
  any client bypass the cache and flood the origin).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .slices import check_slice_size

__all__ = [
    "FieldPolicy",
    "Behaviour",
    "DEFAULT_BEHAVIOUR",
    "NONE",
    "ALL",
    "compile_pattern",
    "match_behaviour",
    "read_behaviour",
]

_MODES = ("none", "allow", "all", "all_except")
_PATTERN_MAX = 255                      # CloudFront's own limit on a path pattern


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """Which names of a family (headers, cookies or query parameters) are selected.

    ``mode``: ``none``, ``allow`` (only ``names``), ``all``, or ``all_except`` (all but ``names``).
    Header and cookie names are compared as given (the key code lower-cases header names);
    query-parameter names compare after the key's percent-decoding.
    """

    mode: str = "none"
    names: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"field policy mode {self.mode!r} is not one of {', '.join(_MODES)}")

    def selects(self, name: str) -> bool:
        """Whether ``name`` is selected by this policy."""
        mode = self.mode
        if mode == "none":
            return False
        if mode == "all":
            return True
        if mode == "allow":
            return name in self.names
        return name not in self.names

    @property
    def selects_any(self) -> bool:
        return self.mode != "none" and not (self.mode == "allow" and not self.names)


NONE = FieldPolicy("none")
ALL = FieldPolicy("all")


@dataclass(frozen=True, slots=True, kw_only=True)
class Behaviour:
    """One cache behaviour (see the module docstring). TTLs in seconds."""

    path_pattern: str = "*"
    min_ttl: float = 0.0
    default_ttl: float | None = 86400.0
    max_ttl: float = 31536000.0
    error_ttl: float = 10.0
    key_headers: FieldPolicy = NONE
    key_cookies: FieldPolicy = NONE
    key_query: FieldPolicy = NONE
    forward_headers: FieldPolicy = NONE
    forward_cookies: FieldPolicy = NONE
    forward_query: FieldPolicy = NONE
    compress: bool = False
    prefetch: int = 0
    slice_size: int = 0
    honour_request_no_cache: bool = False
    cached_methods: frozenset[str] = frozenset({"GET", "HEAD"})
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.min_ttl < 0 or self.max_ttl < 0 or (self.default_ttl is not None and self.default_ttl < 0):
            raise ValueError("TTLs must not be negative")
        if self.error_ttl < 0:
            raise ValueError("error_ttl must not be negative")
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl {self.min_ttl} is above max_ttl {self.max_ttl}")
        if self.default_ttl is not None and not self.min_ttl <= self.default_ttl <= self.max_ttl:
            raise ValueError(f"default_ttl {self.default_ttl} is outside [min_ttl, max_ttl]")
        if self.prefetch < 0:
            raise ValueError("prefetch must not be negative")
        if self.slice_size:
            check_slice_size(self.slice_size)
        if self.key_headers.mode in ("all", "all_except"):
            # Keying on every header makes each client its own cache entry (CloudFront refuses
            # it in cache policies too); it would be a cache that never hits.
            raise ValueError("key_headers must be none or an allow-list")
        for name in ("key_headers", "forward_headers"):
            pol = getattr(self, name)
            if any(n != n.lower() for n in pol.names):
                # Header names reach the key code lower-cased; so must the policy's.
                object.__setattr__(self, name, FieldPolicy(pol.mode, frozenset(n.lower() for n in pol.names)))
        object.__setattr__(self, "_regex", compile_pattern(self.path_pattern))

    def matches(self, path: str) -> bool:
        """Whether this behaviour's pattern matches ``path`` (the raw path, no query)."""
        return self._regex.fullmatch(path) is not None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regex for a CloudFront path pattern: ``*`` any run, ``?`` one character, the rest
    literal; anchored at both ends; a leading ``/`` implied."""
    if not pattern or len(pattern) > _PATTERN_MAX:
        raise ValueError(f"path pattern must be 1..{_PATTERN_MAX} characters")
    if not pattern.startswith(("/", "*")):
        pattern = "/" + pattern
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


DEFAULT_BEHAVIOUR = Behaviour()
"""CloudFront's defaults: TTLs 0 / 1 day / 1 year, nothing but the path in the key."""


def match_behaviour(path: str, behaviours: Sequence[Behaviour],
                    default: Behaviour = DEFAULT_BEHAVIOUR) -> Behaviour:
    """The first behaviour in ``behaviours`` whose pattern matches ``path``, else ``default``."""
    for b in behaviours:
        if b._regex.fullmatch(path) is not None:
            return b
    return default


# --- reading from cluster.toml ---------------------------------------------------------------

_KEYS = {
    "path_pattern", "min_ttl", "default_ttl", "max_ttl", "error_ttl", "key_headers", "key_cookies", "key_query",
    "forward_headers", "forward_cookies", "forward_query", "compress", "prefetch",
    "slice_size", "honour_request_no_cache", "cached_methods",
}


def _policy(reader: Any, data: Mapping[str, Any], key: str, prefix: str, *,
            lower: bool = False) -> FieldPolicy:
    """A FieldPolicy from ``"none"`` / ``"all"`` / a list of names (allow-list) /
    ``{ all_except = [...] }``."""
    full = f"{prefix}.{key}" if prefix else key
    if key not in data:
        return NONE
    v = data[key]
    if v in ("none", "all"):
        return FieldPolicy(v)
    if isinstance(v, list) and all(isinstance(n, str) for n in v):
        return FieldPolicy("allow", frozenset(n.lower() if lower else n for n in v))
    if isinstance(v, dict) and set(v) == {"all_except"} and isinstance(v["all_except"], list) \
            and all(isinstance(n, str) for n in v["all_except"]):
        return FieldPolicy("all_except", frozenset(n.lower() if lower else n for n in v["all_except"]))
    raise reader.error(full, 'expected "none", "all", a list of names, or { all_except = [...] }')


def read_behaviour(reader: Any, data: Mapping[str, Any], prefix: str, *,
                   default_pattern: str = "*") -> Behaviour:
    """A Behaviour from one TOML table through ``headwater.config.Reader`` (errors name the key
    and its line). Example::

        [[distributions.behaviours]]
        path_pattern = "/titles/*.m4s"
        min_ttl = 0
        default_ttl = 86400
        max_ttl = 31536000
        key_query = ["v"]            # or "none" / "all" / { all_except = ["utm_source"] }
        key_headers = ["origin"]
        compress = false
        prefetch = 3
        slice_size = "4MiB"          # 0: off
    """
    reader.check_keys(data, prefix, _KEYS)
    kw: dict[str, Any] = {"path_pattern": reader.get(data, "path_pattern", prefix, str, default_pattern)}
    for k in ("min_ttl", "max_ttl", "error_ttl"):
        if k in data:
            kw[k] = reader.get(data, k, prefix, float)
    if "default_ttl" in data:
        v = data["default_ttl"]
        kw["default_ttl"] = None if v == "heuristic" else reader.get(data, "default_ttl", prefix, float)
    for k in ("compress", "honour_request_no_cache"):
        if k in data:
            kw[k] = reader.get(data, k, prefix, bool)
    if "prefetch" in data:
        kw["prefetch"] = reader.get(data, "prefetch", prefix, int)
    if "slice_size" in data:
        kw["slice_size"] = reader.size(data, "slice_size", prefix, 0)
    if "cached_methods" in data:
        methods = reader.get(data, "cached_methods", prefix, list)
        if not methods or not all(m in ("GET", "HEAD") for m in methods):
            raise reader.error(f"{prefix}.cached_methods", 'expected a list of "GET" and "HEAD"')
        kw["cached_methods"] = frozenset(methods)
    for k in ("key_headers", "forward_headers"):
        kw[k] = _policy(reader, data, k, prefix, lower=True)
    for k in ("key_cookies", "key_query", "forward_cookies", "forward_query"):
        kw[k] = _policy(reader, data, k, prefix)
    try:
        return Behaviour(**kw)
    except ValueError as e:
        raise reader.error(prefix, str(e)) from None
