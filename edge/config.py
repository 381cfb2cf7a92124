"""The edge's part of cluster.toml: ``[[edge]]`` daemons and ``[[distributions]]``.

Read once through the kernel's :class:`~headwater.config.Reader` (errors name the key and its
line) into frozen dataclasses; every edge default lives here.

An ``[[edge]]`` entry is one daemon of the ``edge`` role; its ``tier`` says what it is:

- ``pop``: faces viewers; a RAM tier then a disk tier; misses go to a regional cache chosen by
  rendezvous hashing of the cache key (:mod:`.tiers`);
- ``regional``: a disk tier; misses go to the shield;
- ``shield``: a disk tier in front of the origin; the only tier that talks to origins.

A tier with nothing configured above it skips to the next one (a POP with no regionals goes to
the shield; with no shield either, to the origin).

A ``[[distributions]]`` entry is one CloudFront-like distribution: the hostnames it answers for,
its origin (``http(s)://host:port/prefix`` or ``s3://bucket/prefix``, the object store's S3
gateway of this cluster, fetched with SigV4), an optional secondary origin for failover, its
cache behaviours (``[[distributions.behaviours]]``, each read by edge-cache's
:func:`~headwater.edge.cache.read_behaviour`), and who may fetch: ``trusted_keys`` (ids of
``[[cdn.keys]]``: requests need a CloudFront signed URL or signed cookies made with one of them)
and ``allowed_methods`` (GET and HEAD by default; others are passed through to the origin, never
cached, and invalidate what they change). A behaviour may set both for its paths.

``[cdn]`` holds what every POP enforces: ``[[cdn.keys]]`` (:mod:`.signedurl`),
``[cdn.client_limits]`` and ``[[cdn.rules]]`` (:mod:`.limits`), ``[cdn.purge]`` (:mod:`.purge`),
``[cdn.geo]`` (where clients are, for rules by country: :mod:`headwater.geo.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from headwater.config import GiB, HttpLimits, MiB, Reader, read_http_limits
from headwater.geo.config import GeoConfig, read_geo
from headwater.geo.pops import EDGE_DEFAULT_HOST

from .cache import DEFAULT_BEHAVIOUR, Behaviour, read_behaviour
from .compress import CompressionConfig, read_compression_config
from .prefetch import PrefetchConfig, read_prefetch_config
from .promote import PromotionConfig
from .limits import ClientLimits, Rule, read_client_limits, read_rules
from .purge import PurgeConfig, read_purge_config
from .signedurl import SigningKeys, read_signing_keys
from .upstreamslots import SlotLimits

__all__ = ["TIERS", "METHODS", "SAFE_ONLY", "EdgeConfig", "Origin", "Route", "Distribution", "CdnConfig",
           "read_edge", "read_distributions", "read_origin", "read_cdn", "check_edge", "purge_home",
           "failover_budget_s", "FAILOVER_MARGIN_S", "read_upstream_slots"]

TIERS = ("pop", "regional", "shield")
# What ``allowed_methods`` may name (CloudFront's seven); GET and HEAD are always allowed.
METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"})
SAFE_ONLY = frozenset({"GET", "HEAD"})


# The shield's wait on an origin (connect, head, each body read), by default.
ORIGIN_TIMEOUT_S = 10.0
ORIGIN_TIMEOUT_WITH_SECONDARY_S = 4.0

@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeConfig:
    """One edge daemon: ``workers`` processes share ``port`` (and ``tls_port``) with SO_REUSEPORT."""

    id: str
    tier: str
    host: str = EDGE_DEFAULT_HOST
    port: int
    admin_port: int
    # HTTPS with ALPN (h2, http/1.1) on tls_port, with tls_cert and tls_key.
    tls_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    workers: int = 1
    region: str = ""
    lat: float | None = None
    lon: float | None = None
    # The RAM tier (POPs only; 0 turns it off) and the disk tier.
    ram_bytes: int = 0
    disk_bytes: int = 1 * GiB
    cache_dir: Path = Path("var/edge/cache")
    # The ids of the next tier's daemons this one fetches from; empty: every daemon of that tier.
    upstreams: tuple[str, ...] = ()
    # Upstream: connecting, and the wait for each part of the answer (head, each body read). A
    # POP's or regional's wait for the head must outlast the shield's failover from a hung
    # primary to the secondary (failover_budget_s; check_edge refuses less): 15 s covers the
    # defaults' 2 x (2 s connect + 4 s origin_timeout) and a second for the hops between.
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 15.0
    # A regional that fails this many fetches in a row is left out for down_seconds; at the top
    # tier, an origin that does (no answer, or a 5xx) is skipped for as long (the breaker).
    upstream_fall: int = 3
    upstream_down_s: float = 10.0
    # A collapsed fetch keeps this much of its body in memory for the requests that share it;
    # a waiter further behind reads the stored entry instead.
    collapse_window_bytes: int = 4 * MiB
    # Per worker: upstream fetches open at once (every kind), of which rest fetches (a viewer
    # behind a shared fetch no store keeps); a fetch past them waits, then is refused
    # (.upstreamslots: 512 and 16 by default, a wait of 1 s, 256 waiting at most).
    upstream_slots: SlotLimits = SlotLimits()
    # A POP copies a disk-tier hit into its RAM tier on the key's second disk hit (.promote):
    # bodies up to promote_max_size, at most promote_rate bytes a second.
    promotion: PromotionConfig = PromotionConfig()
    limits: HttpLimits = field(default_factory=HttpLimits)

    @property
    def role(self) -> str:
        return "edge"

    @property
    def port_keys(self) -> tuple[str, ...]:
        return ("port", "admin_port") + (("tls_port",) if self.tls_port is not None else ())

    @property
    def needs_cluster_secret(self) -> bool:
        """Always: invalidations and the purge feed between tiers are signed with it
        (:mod:`.adminauth`); and with ``tls_cert = "auto"`` the local CA's key is sealed under it."""
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """Where a distribution's objects come from.

    ``kind`` "http": ``scheme://host:port`` plus ``path_prefix``. ``kind`` "s3": ``bucket`` on the
    S3 endpoint (``endpoint``, or this cluster's ``[gateway]`` when empty), signed with SigV4
    using ``access_key``/``secret_key`` (or the first ``[[users]]`` entry when empty).
    """

    url: str
    kind: str
    scheme: str = "http"
    host: str = ""
    port: int = 80
    path_prefix: str = ""
    bucket: str = ""
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    region: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One cache behaviour as the request path uses it: edge-cache's :class:`Behaviour` (TTLs,
    key and forward policies, slices) plus who may use it. ``trusted_keys`` None: the
    distribution's; () : no signature needed."""

    cache: Behaviour = DEFAULT_BEHAVIOUR
    trusted_keys: tuple[str, ...] | None = None
    allowed_methods: frozenset[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Distribution:
    """One distribution: what it answers for, where its objects come from, and its behaviours."""

    name: str
    hostnames: tuple[str, ...] = ()
    origin: Origin
    secondary: Origin | None = None
    # In order, first match wins; then ``default_route`` (the behaviour whose pattern is "*").
    behaviours: tuple[Route, ...] = ()
    default_route: Route = Route()
    # Key-pair ids of [[cdn.keys]]: empty = public.
    trusted_keys: tuple[str, ...] = ()
    allowed_methods: frozenset[str] = SAFE_ONLY
    # How long the shield waits on the origin before it fails over (connect, head, each read):
    # by default ORIGIN_TIMEOUT_WITH_SECONDARY_S with a secondary, else ORIGIN_TIMEOUT_S.
    origin_timeout_s: float = 10.0

    def route(self, path: str) -> Route:
        """The behaviour ``path`` falls under (CloudFront: the first matching pattern)."""
        for route in self.behaviours:
            if route.cache.matches(path):
                return route
        return self.default_route

    def keys_for(self, route: Route) -> tuple[str, ...]:
        """The key-pair ids whose signatures ``route`` requires (empty: none)."""
        return self.trusted_keys if route.trusted_keys is None else route.trusted_keys

    def methods_for(self, route: Route) -> frozenset[str]:
        return self.allowed_methods if route.allowed_methods is None else route.allowed_methods


@dataclass(frozen=True, slots=True, kw_only=True)
class CdnConfig:
    """``[cdn]``: the signing keys, the client limits and rules, purge, prefetch and compression settings."""

    keys: SigningKeys = SigningKeys()
    client_limits: ClientLimits = ClientLimits()
    rules: tuple[Rule, ...] = ()
    purge: PurgeConfig = PurgeConfig()
    prefetch: PrefetchConfig = PrefetchConfig()
    compression: CompressionConfig = CompressionConfig()
    # Where clients are, for rules by country: ``[cdn.geo]`` (the format of ``[dns.geo]``); read
    # when a rule names countries or the table is given, else None (no lookups).
    geo: GeoConfig | None = None


_EDGE_KEYS = {"id", "tier", "host", "port", "admin_port", "tls_port", "tls_cert", "tls_key", "workers",
              "region", "lat", "lon", "ram_size", "disk_size", "cache_dir", "data_dir", "upstreams",
              "connect_timeout_seconds", "read_timeout_seconds", "upstream_fall", "upstream_down_seconds",
              "collapse_window", "limits", "promote_max_size",
              "promote_rate", "max_upstream_fetches", "max_rest_fetches", "upstream_wait_seconds",
              "upstream_wait_limit"}

# The largest slot and queue counts accepted (the defaults are SlotLimits').
_SLOTS_CEILING = 65536


def read_upstream_slots(r: Reader, item: Mapping[str, Any], p: str) -> SlotLimits:
    """``max_upstream_fetches`` (1 or more), ``max_rest_fetches`` (0: a viewer behind a shared
    fetch no store keeps is cut at once; at most max_upstream_fetches, whose slots it also
    takes), ``upstream_wait_seconds`` (0: refuse at once) and ``upstream_wait_limit``."""
    d = SlotLimits()
    fetches = r.get(item, "max_upstream_fetches", p, int, d.max_upstream_fetches)
    if not 1 <= fetches <= _SLOTS_CEILING:
        raise r.error(f"{p}.max_upstream_fetches", f"{fetches} is outside 1..{_SLOTS_CEILING}")
    rest = r.get(item, "max_rest_fetches", p, int, min(d.max_rest_fetches, fetches))
    if not 0 <= rest <= fetches:
        raise r.error(f"{p}.max_rest_fetches", f"{rest} is outside 0..{fetches} (max_upstream_fetches: "
                      f"a rest fetch takes one of those slots too)")
    limit = r.get(item, "upstream_wait_limit", p, int, d.max_waiting)
    if not 0 <= limit <= _SLOTS_CEILING:
        raise r.error(f"{p}.upstream_wait_limit", f"{limit} is outside 0..{_SLOTS_CEILING}")
    wait = r.non_negative(item, "upstream_wait_seconds", p, d.wait_s)
    return SlotLimits(max_upstream_fetches=fetches, max_rest_fetches=rest, wait_s=wait, max_waiting=limit)


def read_edge(r: Reader, item: Mapping[str, Any], p: str) -> EdgeConfig:
    """One ``[[edge]]`` table."""
    r.check_keys(item, p, _EDGE_KEYS)
    node_id = r.node_id(item, p)
    tier = r.get(item, "tier", p, str, required=True)
    if tier not in TIERS:
        raise r.error(f"{p}.tier", f"{tier!r} is not one of {', '.join(TIERS)}")
    workers = r.get(item, "workers", p, int, 1)
    if not 1 <= workers <= 256:
        raise r.error(f"{p}.workers", "must be between 1 and 256")
    lat = r.get(item, "lat", p, float, None)
    lon = r.get(item, "lon", p, float, None)
    if tier == "pop" and (lat is None or lon is None):
        raise r.error(f"{p}.lat" if lat is None else f"{p}.lon", "a POP needs its location (lat and lon)")
    if lat is not None and not -90 <= lat <= 90:
        raise r.error(f"{p}.lat", f"{lat} is outside -90..90")
    if lon is not None and not -180 <= lon <= 180:
        raise r.error(f"{p}.lon", f"{lon} is outside -180..180")
    ram = r.size(item, "ram_size", p, 256 * MiB if tier == "pop" else 0)
    if ram and tier != "pop":
        raise r.error(f"{p}.ram_size", "only POPs have a RAM tier")
    tls_port = r.port(item, "tls_port", p, None) if "tls_port" in item else None
    cert, key = r.tls_files(item, p)
    if tls_port is not None and cert is None:
        raise r.error(f"{p}.tls_port", 'needs tls_cert and tls_key (files, or both "auto" for a certificate '
                      "from the cluster's local CA)")
    raw_dir = r.get(item, "cache_dir", p, str, "")
    if raw_dir:
        cache_dir = Path(raw_dir).expanduser()
        cache_dir = cache_dir if cache_dir.is_absolute() else r.root / cache_dir
    else:
        cache_dir = r.node_data_dir(item, p, node_id) / "cache"
    upstreams = r.get(item, "upstreams", p, list, [])
    if not all(isinstance(u, str) for u in upstreams):
        raise r.error(f"{p}.upstreams", "must be an array of [[edge]] ids")
    if tier == "shield" and upstreams:
        raise r.error(f"{p}.upstreams", "a shield fetches from the distributions' origins")
    fall = r.get(item, "upstream_fall", p, int, 3)
    if fall < 1:
        raise r.error(f"{p}.upstream_fall", "must be at least 1")
    return EdgeConfig(
        id=node_id, tier=tier, host=r.get(item, "host", p, str, EDGE_DEFAULT_HOST),
        port=r.port(item, "port", p), admin_port=r.port(item, "admin_port", p),
        tls_port=tls_port, tls_cert=cert, tls_key=key, workers=workers,
        region=r.get(item, "region", p, str, ""), lat=lat, lon=lon,
        ram_bytes=ram, disk_bytes=r.size(item, "disk_size", p, 1 * GiB), cache_dir=cache_dir,
        upstreams=tuple(upstreams),
        connect_timeout_s=r.positive(item, "connect_timeout_seconds", p, 2.0),
        read_timeout_s=r.positive(item, "read_timeout_seconds", p, 15.0),
        upstream_fall=fall, upstream_down_s=r.positive(item, "upstream_down_seconds", p, 10.0),
        collapse_window_bytes=r.size(item, "collapse_window", p, 4 * MiB),
        upstream_slots=read_upstream_slots(r, item, p),
        promotion=PromotionConfig(max_object_bytes=r.size(item, "promote_max_size", p, 1 * MiB),
                                  bytes_per_second=r.size(item, "promote_rate", p, 64 * MiB)),
        limits=read_http_limits(r, r.table(item, "limits", p), f"{p}.limits"),
    )


def read_origin(r: Reader, item: Mapping[str, Any], key: str, p: str, *, required: bool = True) -> Origin | None:
    """``origin`` / ``secondary_origin``: an HTTP(S) URL or ``s3://bucket[/prefix]``."""
    url = r.get(item, key, p, str, None, required=required)
    if url is None:
        return None
    full = f"{p}.{key}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise r.error(full, f"{url!r} is not a URL: {e}") from None
    if parts.query or parts.fragment:
        raise r.error(full, "an origin URL has no query or fragment")
    prefix = parts.path.rstrip("/")
    if parts.scheme == "s3":
        if not parts.hostname:
            raise r.error(full, "s3://BUCKET[/prefix]: the bucket is missing")
        endpoint = r.get(item, "s3_endpoint", p, str, "")
        if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
            raise r.error(f"{p}.s3_endpoint", "must be an http:// or https:// URL")
        access = r.get(item, "access_key", p, str, "")
        secret = r.get(item, "secret_key", p, str, "")
        if bool(access) != bool(secret):
            raise r.error(f"{p}.access_key", "access_key and secret_key go together")
        return Origin(url=url, kind="s3", bucket=parts.netloc, path_prefix=prefix, endpoint=endpoint,
                      access_key=access, secret_key=secret, region=r.get(item, "s3_region", p, str, ""))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.error(full, f"{url!r}: expected http://host[:port][/prefix], https://… or s3://bucket")
    return Origin(url=url, kind="http", scheme=parts.scheme, host=parts.hostname,
                  port=port or (443 if parts.scheme == "https" else 80), path_prefix=prefix)


def _key_ids(r: Reader, item: Mapping[str, Any], p: str) -> tuple[str, ...]:
    ids = r.get(item, "trusted_keys", p, list, [])
    if not all(isinstance(k, str) and k for k in ids):
        raise r.error(f"{p}.trusted_keys", "expected an array of [[cdn.keys]] ids")
    return tuple(ids)


def _methods(r: Reader, item: Mapping[str, Any], p: str) -> frozenset[str]:
    methods = r.get(item, "allowed_methods", p, list, ["GET", "HEAD"])
    if not all(isinstance(m, str) and m.upper() in METHODS for m in methods):
        raise r.error(f"{p}.allowed_methods", f"expected names among {', '.join(sorted(METHODS))}")
    return frozenset(m.upper() for m in methods) | SAFE_ONLY


def _read_routes(r: Reader, item: Mapping[str, Any], p: str) -> tuple[tuple[Route, ...], Route]:
    """``[[distributions.behaviours]]``: edge-cache's keys (``read_behaviour``) plus ours
    (``trusted_keys``, ``allowed_methods``). A behaviour whose pattern is ``*`` is the default."""
    raw = item.get("behaviours", [])
    if not isinstance(raw, list) or not all(isinstance(b, dict) for b in raw):
        raise r.error(f"{p}.behaviours", "expected an array of tables ([[distributions.behaviours]])")
    routes: list[Route] = []
    default = Route()
    for i, table in enumerate(raw):
        bp = f"{p}.behaviours[{i}]"
        ours = {k: table[k] for k in ("trusted_keys", "allowed_methods") if k in table}
        cache = read_behaviour(r, {k: v for k, v in table.items() if k not in ours}, bp)
        route = Route(cache=cache,
                      trusted_keys=_key_ids(r, ours, bp) if "trusted_keys" in ours else None,
                      allowed_methods=_methods(r, ours, bp) if "allowed_methods" in ours else None)
        if cache.path_pattern == "*":
            default = route
        else:
            routes.append(route)
    return tuple(routes), default


_DIST_KEYS = {"name", "hostnames", "origin", "secondary_origin", "s3_endpoint", "s3_region", "access_key",
              "secret_key", "behaviours", "origin_timeout_seconds", "trusted_keys", "allowed_methods"}


def read_distributions(r: Reader, value: Any) -> tuple[Distribution, ...]:
    """``[[distributions]]``: names unique, a hostname in one distribution only."""
    if not isinstance(value, list):
        raise r.error("distributions", "expected an array of tables ([[distributions]])")
    out: list[Distribution] = []
    seen_hosts: dict[str, str] = {}
    for i, item in enumerate(value):
        p = f"distributions[{i}]"
        if not isinstance(item, dict):
            raise r.error(p, "expected a table")
        r.check_keys(item, p, _DIST_KEYS)
        name = r.get(item, "name", p, str, required=True)
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise r.error(f"{p}.name", f"{name!r}: letters, digits, - and _ only")
        if any(d.name == name for d in out):
            raise r.error(f"{p}.name", f"distribution {name!r} is named twice")
        hosts = r.get(item, "hostnames", p, list, [])
        if not all(isinstance(h, str) and h for h in hosts):
            raise r.error(f"{p}.hostnames", "must be an array of host names")
        hosts = [h.lower().rstrip(".") for h in hosts]
        for h in hosts:
            if h in seen_hosts:
                raise r.error(f"{p}.hostnames", f"{h!r} is already distribution {seen_hosts[h]!r}'s")
            seen_hosts[h] = name
        routes, default = _read_routes(r, item, p)
        secondary = read_origin(r, item, "secondary_origin", p, required=False)
        # With a secondary, a short wait: a hung primary costs each miss this long before the
        # failover (the lower tiers' read timeout must outlast two of it). Without one there is
        # nothing to fail over to, and a slow origin (a busy store) is better waited for.
        timeout_default = ORIGIN_TIMEOUT_WITH_SECONDARY_S if secondary is not None else ORIGIN_TIMEOUT_S
        out.append(Distribution(
            name=name, hostnames=tuple(hosts), origin=read_origin(r, item, "origin", p),  # type: ignore[arg-type]
            secondary=secondary,
            behaviours=routes, default_route=default, trusted_keys=_key_ids(r, item, p),
            allowed_methods=_methods(r, item, p),
            origin_timeout_s=r.positive(item, "origin_timeout_seconds", p, timeout_default)))
    return tuple(out)


def read_cdn(r: Reader, value: Any) -> CdnConfig:
    """``[cdn]``: ``[[cdn.keys]]``, ``[cdn.client_limits]``, ``[[cdn.rules]]``, ``[cdn.purge]``, ``[cdn.geo]``."""
    if not isinstance(value, dict):
        raise r.error("cdn", "expected a table ([cdn])")
    r.check_keys(value, "cdn", {"keys", "client_limits", "rules", "purge", "prefetch",
                                "compression", "geo"})
    rules = read_rules(r, value.get("rules"), "cdn.rules")
    # A Country database will do here: the rules need a country, not coordinates.
    geo = read_geo(r, value.get("geo", {}), "cdn.geo", coordinates=False) \
        if "geo" in value or any(rule.countries for rule in rules) else None
    return CdnConfig(keys=read_signing_keys(r, value.get("keys"), "cdn.keys"),
                     client_limits=read_client_limits(r, value.get("client_limits"), "cdn.client_limits"),
                     rules=rules, geo=geo,
                     purge=read_purge_config(r, value.get("purge"), "cdn.purge"),
                     prefetch=read_prefetch_config(r, value.get("prefetch"), "cdn.prefetch"),
                     compression=read_compression_config(r, value.get("compression"), "cdn.compression"))


# What a lower tier's read timeout must exceed a shield's failover budget by: the hops between.
FAILOVER_MARGIN_S = 1.0


def failover_budget_s(dist: Distribution, connect_timeout_s: float) -> float:
    """The longest a top-tier daemon (connecting with ``connect_timeout_s``) may take to get a
    response head for ``dist`` when it fails over: each origin of the group in turn, its connect
    (at most the origin timeout) then its head."""
    attempts = 1 + (dist.secondary is not None)
    return attempts * (min(connect_timeout_s, dist.origin_timeout_s) + dist.origin_timeout_s)


def _check_failover_timeouts(r: Reader, edges: tuple[EdgeConfig, ...], dists: Any) -> None:
    """A POP's or regional's read timeout outlasts what the top tier may spend failing over to a
    distribution's secondary origin; else a hung primary ends as a 504 from the lower tier while
    the secondary is healthy. (Without a secondary the lower tier timing out first changes only
    which tier says 504.)"""
    top = next((t for t in ("shield", "regional", "pop") if any(e.tier == t for e in edges)), None)
    tops = [e for e in edges if e.tier == top]
    if len(tops) == len(edges):
        return  # one tier: nothing waits on it but viewers
    for d in dists:
        if d.secondary is None:
            continue
        worst = max(tops, key=lambda e: failover_budget_s(d, e.connect_timeout_s))
        need = failover_budget_s(d, worst.connect_timeout_s) + FAILOVER_MARGIN_S
        for i, e in enumerate(edges):
            if e.tier != top and e.read_timeout_s < need:
                raise r.error(f"edge[{i}].read_timeout_seconds",
                              f"{e.read_timeout_s:g} s is shorter than the {need:g} s {worst.id} may take to fail "
                              f"over to the secondary_origin of distribution {d.name!r} (2 x (connect_timeout_seconds "
                              f"{min(worst.connect_timeout_s, d.origin_timeout_s):g} + origin_timeout_seconds "
                              f"{d.origin_timeout_s:g}) + {FAILOVER_MARGIN_S:g} s): raise it, or lower "
                              f"origin_timeout_seconds")


def purge_home(cluster: Any) -> EdgeConfig | None:
    """The daemon holding every distribution's purge log (:mod:`.invalidation`): the first shield
    in cluster.toml; with no shield the first regional, else the first POP (None: no ``[[edge]]``)."""
    edges = tuple(getattr(cluster, "edge", ()) or ())
    for tier in ("shield", "regional", "pop"):
        for e in edges:
            if e.tier == tier:
                return e
    return None


def check_edge(r: Reader, cfg: Any, env: Mapping[str, str]) -> None:
    """Across sections: upstream ids name daemons of the next tier; the purge home runs one
    worker; the lower tiers' read timeouts outlast the top tier's failover between origins
    (:func:`failover_budget_s`); an s3:// origin needs a gateway (or s3_endpoint) and credentials
    (its own or a [[users]] entry)."""
    edges = tuple(getattr(cfg, "edge", ()) or ())
    by_id = {e.id: e for e in edges}
    home = purge_home(cfg)
    if home is not None and home.workers > 1:
        i = edges.index(home)
        raise r.error(f"edge[{i}].workers", f"{home.id} keeps the purge log (the first {home.tier}): it runs "
                                            f"one worker, so that one process numbers the purges")
    for i, e in enumerate(edges):
        want = "regional" if e.tier == "pop" else "shield"
        for u in e.upstreams:
            if u not in by_id:
                raise r.error(f"edge[{i}].upstreams", f"no [[edge]] with id {u!r}")
            if by_id[u].tier != want:
                raise r.error(f"edge[{i}].upstreams", f"{u!r} is a {by_id[u].tier}, not a {want}")
    dists = getattr(cfg, "distributions", ()) or ()
    if edges and not dists:
        raise r.error("edge", "the edge serves distributions: add a [[distributions]] entry")
    _check_failover_timeouts(r, edges, dists)
    known = set(getattr(cfg, "cdn", CdnConfig()).keys.ids())
    for i, d in enumerate(dists):
        for where, ids in [("trusted_keys", d.trusted_keys)] + [
                (f"behaviours[{j}].trusted_keys", b.trusted_keys or ())
                for j, b in enumerate(d.behaviours + (d.default_route,))]:
            for k in ids:
                if k not in known:
                    raise r.error(f"distributions[{i}].{where}", f"no [[cdn.keys]] entry has id {k!r}")
        for key, o in (("origin", d.origin), ("secondary_origin", d.secondary)):
            if o is None or o.kind != "s3":
                continue
            if not o.endpoint and getattr(cfg, "gateway", None) is None:
                raise r.error(f"distributions[{i}].{key}", "an s3:// origin needs [gateway] or s3_endpoint")
            if not o.access_key and not tuple(getattr(cfg, "users", ()) or ()):
                raise r.error(f"distributions[{i}].{key}", "an s3:// origin needs access_key/secret_key or [[users]]")
