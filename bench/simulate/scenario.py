"""A simulation scenario: read once from TOML into frozen dataclasses.

Every key has its default here (``Scenario`` and friends); a shipped scenario
(``scenarios/*.toml``) sets only what differs, and an error names the key and its line
(``headwater.config.Reader``). Units are in the values: sizes as ``"512 GiB"``, durations as
``"4s"``, ``"45min"``, ``"1h"``, ``"1d"``, rates as ``"400 Gbps"``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from headwater.config import ConfigError, Reader
from headwater.edge.store.policy import POLICIES

__all__ = [
    "Rendition", "Region", "Catalogue", "Media", "Viewers", "Window", "Tiers", "Capacity",
    "Latency", "Scenario", "load_scenario", "loads_scenario", "scenario_path", "SCENARIO_DIR",
    "parse_duration", "parse_rate",
]

SCENARIO_DIR = Path(__file__).parent / "scenarios"

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0,
                   "d": 86400.0, "": 1.0}
_RATE_UNITS = {"bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "tbps": 1e12,
               "b/s": 8.0, "kb/s": 8e3, "mb/s": 8e6, "gb/s": 8e9}


def parse_duration(value: Any, key: str = "duration") -> float:
    """Seconds from ``30``, ``"4s"``, ``"45min"``, ``"1h"`` or ``"1d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _DURATION_UNITS:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    raise ConfigError(key, f"expected a duration such as 30, \"4s\", \"45min\", \"1h\", got {value!r}")


def parse_rate(value: Any, key: str = "rate") -> float:
    """Bits per second from ``"400 Gbps"``, ``"300 Tbps"`` or ``"2 GB/s"`` (bytes, times 8)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z/]+)\s*", value)
        if m and m.group(2).lower() in _RATE_UNITS:
            return float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]
    raise ConfigError(key, f"expected a rate such as \"400 Gbps\" or \"2 GB/s\", got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendition:
    """One rung of the ABR ladder: its bitrate and the share of sessions that play it."""

    name: str
    kbps: float
    share: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Region:
    """Viewers' region: its share of the viewers, its POPs and its regional caches."""

    name: str
    population: float
    pops: tuple[str, ...]
    regionals: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalogue:
    """Titles with Zipf-like popularity by rank; ``new_per_day`` releases take the top ranks
    each day (daily churn); runtimes are log-normal, clamped."""

    titles: int = 20_000
    new_per_day: int = 20
    zipf_alpha: float = 0.9
    runtime_median_s: float = 45 * 60.0
    runtime_sigma: float = 0.5
    runtime_min_s: float = 20 * 60.0
    runtime_max_s: float = 150 * 60.0


DEFAULT_LADDER = (
    Rendition(name="240p", kbps=400, share=0.05),
    Rendition(name="360p", kbps=1200, share=0.10),
    Rendition(name="480p", kbps=2500, share=0.15),
    Rendition(name="720p", kbps=4500, share=0.30),
    Rendition(name="1080p", kbps=6500, share=0.25),
    Rendition(name="2160p", kbps=10000, share=0.15),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Media:
    """How titles are packaged: segment duration, the ladder, the manifest, the TTL."""

    segment_s: float = 4.0
    manifest_bytes: int = 8 * 1024
    ttl_s: float = 86400.0
    ladder: tuple[Rendition, ...] = DEFAULT_LADDER

    @property
    def mean_kbps(self) -> float:
        return sum(r.kbps * r.share for r in self.ladder)


DEFAULT_DIURNAL = (0.30, 0.20, 0.13, 0.09, 0.07, 0.07, 0.09, 0.13, 0.18, 0.22, 0.26, 0.30,
                   0.35, 0.38, 0.40, 0.43, 0.48, 0.56, 0.68, 0.82, 0.95, 1.00, 0.85, 0.55)


@dataclass(frozen=True, slots=True, kw_only=True)
class Viewers:
    """Who watches and how: monthly actives, concurrent viewers at the peak hour, the diurnal
    curve (24 hourly fractions of the peak, interpolated), and abandonment: ``early_share`` of
    sessions stop after an exponential time of mean ``early_mean_s``, ``complete_share`` watch
    to the end, the rest stop at a uniform point of the runtime."""

    mau: int = 50_000_000
    peak_concurrent: int = 2_000_000
    diurnal: tuple[float, ...] = DEFAULT_DIURNAL
    early_share: float = 0.30
    early_mean_s: float = 240.0
    complete_share: float = 0.35


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """The simulated stretch of the day: from ``start_h`` (hour of day) for ``duration_s``;
    the first ``warmup_s`` fill the caches and are not measured."""

    start_h: float = 19.5
    duration_s: float = 7200.0
    warmup_s: float = 3600.0

    @property
    def measured_s(self) -> float:
        return self.duration_s - self.warmup_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Tiers:
    """Cache sizes of one node of each tier (full scale; SHARDS scales them) and their policy."""

    policy: str = "s3fifo"
    pop_ram_bytes: int = 512 * 2**30
    pop_disk_bytes: int = 92 * 2**40
    regional_bytes: int = 400 * 2**40
    shield_bytes: int = 1000 * 2**40
    shields: tuple[str, ...] = ("shield-1", "shield-2")
    # The edge's disk -> RAM promotion ([[edge]] promote_max_size, promote_rate; per POP here).
    promote_max_bytes: int = 2**20
    promote_bytes_per_s: int = 64 * 2**20


@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    """Hardware and targets the report sizes for: a POP's egress, its disks, and the CDN card's
    design point (300 Tbps, 37.5 M fetches/s, 90 % hit ratio)."""

    pop_egress_bps: float = 400e9
    utilisation: float = 0.7
    disk_bytes: int = 7_680_000_000_000
    disk_bps: float = 3e9 * 8
    target_egress_bps: float = 300e12
    target_fetches_per_s: float = 37.5e6
    target_hit_ratio: float = 0.90


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """Time to first byte by the tier that serves (client RTT to the POP included in each),
    and client bandwidth (log-normal: median, sigma) for the startup estimate."""

    pop_ram_ms: float = 20.0
    pop_disk_ms: float = 25.0
    regional_ms: float = 45.0
    shield_ms: float = 90.0
    origin_ms: float = 200.0
    client_mbps_median: float = 40.0
    client_mbps_sigma: float = 0.8

    def by_level(self) -> tuple[float, ...]:
        """Seconds to first byte when served at level 0 (POP RAM) .. 4 (origin)."""
        return tuple(ms / 1000 for ms in (self.pop_ram_ms, self.pop_disk_ms, self.regional_ms,
                                           self.shield_ms, self.origin_ms))


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """Everything one simulation run needs; ``dataclasses.replace`` makes a sweep point."""

    name: str = "unnamed"
    seed: int = 1
    sampling_rate: float = 0.002
    catalogue: Catalogue = field(default_factory=Catalogue)
    media: Media = field(default_factory=Media)
    viewers: Viewers = field(default_factory=Viewers)
    window: Window = field(default_factory=Window)
    regions: tuple[Region, ...] = ()
    tiers: Tiers = field(default_factory=Tiers)
    capacity: Capacity = field(default_factory=Capacity)
    latency: Latency = field(default_factory=Latency)

    @property
    def pops(self) -> tuple[str, ...]:
        return tuple(p for r in self.regions for p in r.pops)

    def with_sweep(self, name: str, value: float) -> Scenario:
        """This scenario with one swept parameter set: ``segment`` (seconds), ``ttl`` (seconds),
        ``policy`` (name), ``rate`` (SHARDS), ``ram``/``disk`` (bytes per POP), ``promote``
        (the largest body copied from disk to RAM), ``promote_rate`` (bytes a second of it)."""
        if name == "segment":
            return dataclasses.replace(self, media=dataclasses.replace(self.media, segment_s=float(value)))
        if name == "ttl":
            return dataclasses.replace(self, media=dataclasses.replace(self.media, ttl_s=float(value)))
        if name == "policy":
            return dataclasses.replace(self, tiers=dataclasses.replace(self.tiers, policy=str(value)))
        if name == "rate":
            return dataclasses.replace(self, sampling_rate=float(value))
        if name == "ram":
            return dataclasses.replace(self, tiers=dataclasses.replace(self.tiers, pop_ram_bytes=int(value)))
        if name == "disk":
            return dataclasses.replace(self, tiers=dataclasses.replace(self.tiers, pop_disk_bytes=int(value)))
        if name == "promote":
            return dataclasses.replace(self, tiers=dataclasses.replace(self.tiers, promote_max_bytes=int(value)))
        if name == "promote_rate":
            return dataclasses.replace(self, tiers=dataclasses.replace(self.tiers, promote_bytes_per_s=int(value)))
        raise ValueError(f"unknown sweep parameter {name!r} "
                         "(segment, ttl, policy, rate, ram, disk, promote, promote_rate)")


_TOP = {"name", "seed", "sampling", "catalogue", "media", "viewers", "window", "region", "tiers",
        "capacity", "latency"}


def scenario_path(name_or_path: str) -> Path:
    """A shipped scenario by name (``prime-peak``) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    shipped = SCENARIO_DIR / f"{name_or_path}.toml"
    if not shipped.exists():
        names = ", ".join(sorted(f.stem for f in SCENARIO_DIR.glob("*.toml")))
        raise ConfigError("scenario", f"no scenario {name_or_path!r} (shipped: {names})")
    return shipped


def load_scenario(name_or_path: str) -> Scenario:
    """Read a scenario by name or path (see ``scenario_path``)."""
    path = scenario_path(name_or_path)
    return loads_scenario(path.read_text(), path=str(path))


def loads_scenario(text: str, *, path: str | None = None) -> Scenario:
    """Parse scenario TOML; ``ConfigError`` names the key (and line) of any mistake."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("scenario", f"not valid TOML: {e}", path=path) from None
    r = Reader(path, text)
    r.check_keys(data, "", _TOP)
    d = Scenario()
    sampling = r.table(data, "sampling", "")
    r.check_keys(sampling, "sampling", {"rate"})
    rate = r.get(sampling, "rate", "sampling", float, d.sampling_rate)
    if not 0 < rate <= 1:
        raise r.error("sampling.rate", f"{rate} is outside (0, 1]")
    regions = _regions(r, data)
    tiers = _tiers(r, data)
    return Scenario(
        name=r.get(data, "name", "", str, Path(path).stem if path else d.name),
        seed=r.get(data, "seed", "", int, d.seed),
        sampling_rate=rate,
        catalogue=_catalogue(r, data),
        media=_media(r, data),
        viewers=_viewers(r, data),
        window=_window(r, data),
        regions=regions,
        tiers=tiers,
        capacity=_capacity(r, data),
        latency=_latency(r, data),
    )


def _dur(r: Reader, t: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
    if key not in t:
        return default
    try:
        return parse_duration(t[key], f"{prefix}.{key}")
    except ConfigError as e:
        raise r.error(f"{prefix}.{key}", str(e).split(": ", 1)[-1]) from None


def _rate(r: Reader, t: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
    if key not in t:
        return default
    try:
        return parse_rate(t[key], f"{prefix}.{key}")
    except ConfigError as e:
        raise r.error(f"{prefix}.{key}", str(e).split(": ", 1)[-1]) from None


def _share(r: Reader, t: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
    v = r.get(t, key, prefix, float, default)
    if not 0 <= v <= 1:
        raise r.error(f"{prefix}.{key}", f"{v} is outside [0, 1]")
    return v


def _catalogue(r: Reader, data: Mapping[str, Any]) -> Catalogue:
    t, p, d = r.table(data, "catalogue", ""), "catalogue", Catalogue()
    r.check_keys(t, p, {"titles", "new_per_day", "zipf_alpha", "runtime_median", "runtime_sigma",
                        "runtime_min", "runtime_max"})
    titles = r.get(t, "titles", p, int, d.titles)
    if titles < 1:
        raise r.error("catalogue.titles", "needs at least 1 title")
    new = r.get(t, "new_per_day", p, int, d.new_per_day)
    if new < 0:
        raise r.error("catalogue.new_per_day", "is negative")
    lo = _dur(r, t, "runtime_min", p, d.runtime_min_s)
    hi = _dur(r, t, "runtime_max", p, d.runtime_max_s)
    if not 0 < lo <= hi:
        raise r.error("catalogue.runtime_min", "needs 0 < runtime_min <= runtime_max")
    return Catalogue(titles=titles, new_per_day=new,
                     zipf_alpha=r.non_negative(t, "zipf_alpha", p, d.zipf_alpha),
                     runtime_median_s=_dur(r, t, "runtime_median", p, d.runtime_median_s),
                     runtime_sigma=r.non_negative(t, "runtime_sigma", p, d.runtime_sigma),
                     runtime_min_s=lo, runtime_max_s=hi)


def _media(r: Reader, data: Mapping[str, Any]) -> Media:
    t, p, d = r.table(data, "media", ""), "media", Media()
    r.check_keys(t, p, {"segment", "manifest_size", "ttl", "ladder"})
    seg = _dur(r, t, "segment", p, d.segment_s)
    if seg <= 0:
        raise r.error("media.segment", "must be positive")
    ladder = d.ladder
    if "ladder" in t:
        raw = t["ladder"]
        if not isinstance(raw, list) or not raw:
            raise r.error("media.ladder", "expected a non-empty array of tables [[media.ladder]]")
        rungs = []
        for i, rung in enumerate(raw):
            rp = f"media.ladder[{i}]"
            if not isinstance(rung, dict):
                raise r.error(rp, "expected a table")
            r.check_keys(rung, rp, {"name", "kbps", "share"})
            rungs.append(Rendition(name=r.get(rung, "name", rp, str, required=True),
                                   kbps=r.positive(rung, "kbps", rp, ...),
                                   share=_share(r, rung, "share", rp, ...)))
        total = sum(x.share for x in rungs)
        if abs(total - 1) > 1e-6:
            raise r.error("media.ladder", f"shares add up to {total:g}, not 1")
        ladder = tuple(rungs)
    return Media(segment_s=seg, manifest_bytes=r.size(t, "manifest_size", p, d.manifest_bytes),
                 ttl_s=_dur(r, t, "ttl", p, d.ttl_s), ladder=ladder)


def _viewers(r: Reader, data: Mapping[str, Any]) -> Viewers:
    t, p, d = r.table(data, "viewers", ""), "viewers", Viewers()
    r.check_keys(t, p, {"mau", "peak_concurrent", "diurnal", "early_share", "early_mean",
                        "complete_share"})
    diurnal = d.diurnal
    if "diurnal" in t:
        raw = t["diurnal"]
        if (not isinstance(raw, list) or len(raw) != 24
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in raw)):
            raise r.error("viewers.diurnal", "expected 24 hourly fractions of the peak, each in [0, 1]")
        diurnal = tuple(float(x) for x in raw)
    early = _share(r, t, "early_share", p, d.early_share)
    complete = _share(r, t, "complete_share", p, d.complete_share)
    if early + complete > 1:
        raise r.error("viewers.complete_share", "early_share + complete_share exceed 1")
    peak = r.get(t, "peak_concurrent", p, int, d.peak_concurrent)
    if peak < 1:
        raise r.error("viewers.peak_concurrent", "needs at least 1 viewer")
    return Viewers(mau=r.get(t, "mau", p, int, d.mau), peak_concurrent=peak, diurnal=diurnal,
                   early_share=early, early_mean_s=_dur(r, t, "early_mean", p, d.early_mean_s),
                   complete_share=complete)


def _window(r: Reader, data: Mapping[str, Any]) -> Window:
    t, p, d = r.table(data, "window", ""), "window", Window()
    r.check_keys(t, p, {"start", "duration", "warmup"})
    start = d.start_h
    if "start" in t:
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", str(t["start"]))
        if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
            raise r.error("window.start", f"expected a time of day such as \"19:30\", got {t['start']!r}")
        start = int(m.group(1)) + int(m.group(2)) / 60
    duration = _dur(r, t, "duration", p, d.duration_s)
    warmup = _dur(r, t, "warmup", p, d.warmup_s)
    if not 0 <= warmup < duration:
        raise r.error("window.warmup", "needs 0 <= warmup < duration")
    return Window(start_h=start, duration_s=duration, warmup_s=warmup)


def _regions(r: Reader, data: Mapping[str, Any]) -> tuple[Region, ...]:
    raw = data.get("region")
    if not isinstance(raw, list) or not raw:
        raise r.error("region", "expected at least one [[region]] with name, population, pops, regionals")
    out, seen = [], set()
    for i, reg in enumerate(raw):
        p = f"region[{i}]"
        if not isinstance(reg, dict):
            raise r.error(p, "expected a table")
        r.check_keys(reg, p, {"name", "population", "pops", "regionals"})
        name = r.get(reg, "name", p, str, required=True)
        pops = r.get(reg, "pops", p, list, required=True)
        regionals = r.get(reg, "regionals", p, list, required=True)
        for key, names in (("pops", pops), ("regionals", regionals)):
            if not names or not all(isinstance(n, str) and n for n in names):
                raise r.error(f"{p}.{key}", "expected a non-empty list of names")
            for n in names:
                if n in seen:
                    raise r.error(f"{p}.{key}", f"{n!r} is named twice")
                seen.add(n)
        out.append(Region(name=name, population=r.positive(reg, "population", p, ...),
                          pops=tuple(pops), regionals=tuple(regionals)))
    total = sum(x.population for x in out)
    return tuple(dataclasses.replace(x, population=x.population / total) for x in out)


def _tiers(r: Reader, data: Mapping[str, Any]) -> Tiers:
    t, p, d = r.table(data, "tiers", ""), "tiers", Tiers()
    r.check_keys(t, p, {"policy", "pop_ram", "pop_disk", "regional", "shield", "shields",
                        "promote_max_size", "promote_rate"})
    policy = r.get(t, "policy", p, str, d.policy)
    if policy not in POLICIES:
        raise r.error("tiers.policy", f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")
    shields = r.get(t, "shields", p, list, list(d.shields))
    if not shields or not all(isinstance(n, str) and n for n in shields):
        raise r.error("tiers.shields", "expected a non-empty list of names")
    return Tiers(policy=policy, pop_ram_bytes=r.size(t, "pop_ram", p, d.pop_ram_bytes),
                 pop_disk_bytes=r.size(t, "pop_disk", p, d.pop_disk_bytes),
                 regional_bytes=r.size(t, "regional", p, d.regional_bytes),
                 shield_bytes=r.size(t, "shield", p, d.shield_bytes), shields=tuple(shields),
                 promote_max_bytes=r.size(t, "promote_max_size", p, d.promote_max_bytes),
                 promote_bytes_per_s=r.size(t, "promote_rate", p, d.promote_bytes_per_s))


def _capacity(r: Reader, data: Mapping[str, Any]) -> Capacity:
    t, p, d = r.table(data, "capacity", ""), "capacity", Capacity()
    r.check_keys(t, p, {"pop_egress", "utilisation", "disk_size", "disk_throughput",
                        "target_egress", "target_fetches_per_s", "target_hit_ratio"})
    util = _share(r, t, "utilisation", p, d.utilisation)
    if util == 0:
        raise r.error("capacity.utilisation", "must be above 0")
    return Capacity(pop_egress_bps=_rate(r, t, "pop_egress", p, d.pop_egress_bps), utilisation=util,
                    disk_bytes=r.size(t, "disk_size", p, d.disk_bytes),
                    disk_bps=_rate(r, t, "disk_throughput", p, d.disk_bps),
                    target_egress_bps=_rate(r, t, "target_egress", p, d.target_egress_bps),
                    target_fetches_per_s=r.non_negative(t, "target_fetches_per_s", p, d.target_fetches_per_s),
                    target_hit_ratio=_share(r, t, "target_hit_ratio", p, d.target_hit_ratio))


def _latency(r: Reader, data: Mapping[str, Any]) -> Latency:
    t, p, d = r.table(data, "latency", ""), "latency", Latency()
    keys = ("pop_ram_ms", "pop_disk_ms", "regional_ms", "shield_ms", "origin_ms",
            "client_mbps_median", "client_mbps_sigma")
    r.check_keys(t, p, set(keys))
    return Latency(**{k: r.non_negative(t, k, p, getattr(d, k)) for k in keys})
