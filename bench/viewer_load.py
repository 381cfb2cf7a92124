"""Many simulated viewers for ``python -m headwater.bench playback --viewers N``: a load
generator, not a browser each.

Each viewer is one small asyncio task: it asks the origin's play API for its title (not timed),
then, on the POP its client subnet's GeoDNS answer names, fetches the HLS master playlist, its
rung's media playlist, the rung's init segment and then segment 1, 2, … in order — every request
with the signed grant's query string (``cdn.query``), as a player does. Startup is from the master
playlist's request to the first media segment's last byte. Playback then runs in real time
(:class:`PlaybackClock`): segment *i* is due when playback reaches it, is requested no earlier
than ``ahead`` segment durations before that, and one that arrives after it is due stalls
playback (a rebuffer) for the difference. Audio is not fetched: the ladder's video rung is what
the bitrate and the cache tiers are about.

The pure parts — the playback clock, the Zipf choice, the playlists, the Prometheus text, the
figures and the report, the simulator's scenario for the same run — are here with the viewer;
:mod:`headwater.bench.playback` starts the world and calls :func:`run_viewers`.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

__all__ = ["PlaybackClock", "ViewerResult", "Target", "LoadFigures", "zipf_weights", "parse_master", "parse_media",
           "parse_metrics", "tier_figures", "TierFigure", "percentile", "summarise_viewers", "render_load", "scenario_toml",
           "run_viewers", "pick_titles", "session_cpu_seconds", "HIT_RESULTS"]

#: The edge's ``result`` labels that are served from its cache (``hw_edge_requests_total``).
HIT_RESULTS = frozenset({"Hit", "StaleHit", "RefreshHit"})

#: Pacing sleeps waking later than this (p95) mean the generator could not keep time: a quarter
#: of a 2 s segment, well under the few segments' lead a viewer keeps.
LAG_WARNING_S = 0.25


# --- pacing (pure) -----------------------------------------------------------------------------

class PlaybackClock:
    """One viewer's playback in real time, without IO: ``durations`` are the segments' seconds.

    Playback starts when segment 0 arrives (:meth:`started`). Segment *i* is due at
    ``start + sum(durations[:i]) + stalled``; it may be requested from ``ahead_s`` before that
    (:meth:`request_at`: the player never holds more than ``ahead_s`` of media unplayed); when it
    arrives late (:meth:`arrived`) playback has been stalled since it was due, and every later
    deadline moves by the stall."""

    def __init__(self, durations: Sequence[float], *, ahead_s: float) -> None:
        if ahead_s < 0:
            raise ValueError("ahead_s must not be negative")
        self.ahead_s = ahead_s
        self._cum = [0.0]
        for d in durations:
            self._cum.append(self._cum[-1] + d)
        self.start: float | None = None
        self.stalled_s = 0.0
        self.stalls = 0
        self.received = 0

    @property
    def segments(self) -> int:
        return len(self._cum) - 1

    def started(self, t: float) -> None:
        """Segment 0 arrived at ``t``: playback begins."""
        self.start = t
        self.received = 1

    def due(self, i: int) -> float:
        """When playback reaches segment ``i`` (given the stalls so far)."""
        if self.start is None:
            raise RuntimeError("playback has not started")
        return self.start + self._cum[i] + self.stalled_s

    def request_at(self, i: int) -> float:
        """The earliest time segment ``i`` is requested."""
        return self.due(i) - self.ahead_s

    def arrived(self, i: int, t: float) -> float:
        """Segment ``i`` arrived at ``t``: the stall it caused (0 when in time)."""
        late = t - self.due(i)
        self.received = max(self.received, i + 1)
        if late > 0:
            self.stalled_s += late
            self.stalls += 1
            return late
        return 0.0

    def played_s(self) -> float:
        """Seconds of media the segments received so far cover."""
        return self._cum[self.received]

    def ended(self) -> float:
        """When playback of every received segment ends."""
        return self.due(self.received)


def zipf_weights(k: int, alpha: float) -> list[float]:
    """P(rank i) ∝ 1/i^alpha for ranks 1..k, normalised (the simulator's catalogue popularity)."""
    w = [1 / (i ** alpha) for i in range(1, k + 1)]
    s = sum(w)
    return [x / s for x in w]


# --- playlists and metrics (pure) ---------------------------------------------------------------

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def parse_master(text: str) -> list[tuple[int, str]]:
    """An HLS master playlist's variants: (BANDWIDTH, URI), highest first."""
    out, pending = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-STREAM-INF:"):
            attrs = dict(_ATTR.findall(line.split(":", 1)[1]))
            pending = int(attrs.get("BANDWIDTH", "0"))
        elif line and not line.startswith("#") and pending is not None:
            out.append((pending, line))
            pending = None
    return sorted(out, key=lambda v: -v[0])


def parse_media(text: str) -> tuple[str | None, list[tuple[float, str]]]:
    """An HLS media playlist: its init segment's URI (``#EXT-X-MAP``) and (seconds, URI) of each
    segment, in order."""
    init, segs, dur = None, [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-MAP:") and init is None:
            init = dict(_ATTR.findall(line.split(":", 1)[1])).get("URI", "").strip('"') or None
        elif line.startswith("#EXTINF:"):
            dur = float(line.split(":", 1)[1].split(",", 1)[0])
        elif line and not line.startswith("#") and dur is not None:
            segs.append((dur, line))
            dur = None
    return init, segs


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, prefix: str = "hw_edge_") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text exposition: {(name, sorted labels): value} for the names with ``prefix``."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        m = _SAMPLE.match(line)
        if m:
            try:
                out[(m.group(1), tuple(sorted(_LABEL.findall(m.group(2) or ""))))] = float(m.group(3))
            except ValueError:
                continue
    return out


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True, slots=True)
class TierFigure:
    """One tier's answers during the run (every node of the tier summed)."""

    tier: str
    requests: float
    hits: float
    bytes: float
    hit_bytes: float
    origin_fetches: float

    @property
    def hit_ratio(self) -> float | None:
        return self.hits / self.requests if self.requests else None

    @property
    def byte_hit_ratio(self) -> float | None:
        return self.hit_bytes / self.bytes if self.bytes else None


def tier_figures(before: dict[str, Metrics], after: dict[str, Metrics]) -> list[TierFigure]:
    """Per tier (pop, regional, shield: in that order, others after), what the nodes' counters
    moved by between two scrapes ({node: parsed /metrics})."""
    acc: dict[str, list[float]] = {}
    for node, now in after.items():
        was = before.get(node, {})
        for (name, labels), value in now.items():
            d = value - was.get((name, labels), 0.0)
            lab = dict(labels)
            tier = lab.get("tier")
            if tier is None or not d:
                continue
            a = acc.setdefault(tier, [0.0] * 5)
            hit = lab.get("result") in HIT_RESULTS
            if name == "hw_edge_requests_total":
                a[0] += d
                a[1] += d if hit else 0
            elif name == "hw_edge_response_bytes_total":
                a[2] += d
                a[3] += d if hit else 0
            elif name == "hw_edge_upstream_fetches_total" and lab.get("target") == "origin":
                a[4] += d
    order = {"pop": 0, "regional": 1, "shield": 2}
    return [TierFigure(t, *acc[t]) for t in sorted(acc, key=lambda t: (order.get(t, 9), t))]


# --- one viewer ---------------------------------------------------------------------------------

@dataclass(slots=True)
class ViewerResult:
    """What one viewer saw. ``startup_s`` None: it never got a first segment (``error`` says
    why). ``stalled_s``/``stalls``: rebuffering after the start; ``played_s``: media seconds
    received and played."""

    title: int
    pop: str
    rung: int
    startup_s: float | None = None
    segments: int = 0
    bytes: int = 0
    played_s: float = 0.0
    stalled_s: float = 0.0
    stalls: int = 0
    error: str = ""
    x_cache_first: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a viewer plays: the title, the POP's base URL (its address and the CDN's port),
    the Host header (the CDN's name), and the /play document."""

    title: int
    pop: str
    base: str
    host: str
    play: dict[str, Any]


def _path_of(url: str) -> str:
    """The path of an absolute URL without its query."""
    rest = url.split("://", 1)[1]
    path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return path.split("?", 1)[0]


def _join(base_path: str, uri: str) -> str:
    """``uri`` relative to the playlist at ``base_path`` (no query)."""
    if uri.startswith("/"):
        return uri
    return base_path.rsplit("/", 1)[0] + "/" + uri


async def play_one(get: Callable[[str], Awaitable[tuple[int, bytes, str]]], target: Target, rung_pick: float, *,
                   watch_s: float, ahead_s: float, now: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, lag: list[float] | None = None
                   ) -> ViewerResult:
    """One viewer: master, media playlist, init, then segments paced by :class:`PlaybackClock`
    until ``watch_s`` of media or the title's end. ``get(path_and_query)`` is (status, body,
    x-cache). ``rung_pick`` in [0, 1) chooses the variant (uniform over the ladder). ``lag``
    collects how late each pacing sleep woke (the generator's own saturation)."""
    query = target.play["cdn"]["query"]
    q = ("?" + query) if query else ""
    res = ViewerResult(title=target.title, pop=target.pop, rung=-1)

    async def fetch(path: str) -> tuple[bytes, str]:
        status, body, xc = await get(path + q)
        if status != 200:
            raise _Failed(f"{status} for {path}")
        res.bytes += len(body)
        return body, xc

    master_path = _path_of(target.play["hls"])
    try:
        t0 = now()
        body, _ = await fetch(master_path)
        variants = parse_master(body.decode())
        if not variants:
            raise _Failed("no variants in the master playlist")
        res.rung = min(int(rung_pick * len(variants)), len(variants) - 1)
        media_path = _join(master_path, variants[res.rung][1])
        body, _ = await fetch(media_path)
        init, segs = parse_media(body.decode())
        if not segs:
            raise _Failed("no segments in the media playlist")
        n, total = 0, 0.0
        while n < len(segs) and total < watch_s:
            total += segs[n][0]
            n += 1
        segs = segs[:n]
        if init:
            await fetch(_join(media_path, init))
        _, res.x_cache_first = await fetch(_join(media_path, segs[0][1]))
        clock = PlaybackClock([d for d, _ in segs], ahead_s=ahead_s)
        t1 = now()
        res.startup_s = t1 - t0
        clock.started(t1)
        for i in range(1, len(segs)):
            wait = clock.request_at(i) - now()
            if wait > 0:
                planned = now() + wait
                await sleep(wait)
                if lag is not None:
                    lag.append(now() - planned)
            await fetch(_join(media_path, segs[i][1]))
            clock.arrived(i, now())
        # The viewer stays until its last segment has played (it holds its place in the count).
        rest = clock.ended() - now()
        if rest > 0:
            await sleep(rest)
        res.segments, res.played_s = clock.received, clock.played_s()
        res.stalled_s, res.stalls = clock.stalled_s, clock.stalls
    except _Failed as e:
        res.error = str(e)
    except Exception as e:  # a connection error or a timeout: this viewer's failure, not the run's
        res.error = f"{type(e).__name__}: {e}"
    if res.error and "clock" in locals():
        res.segments, res.played_s = clock.received, clock.played_s()
        res.stalled_s, res.stalls = clock.stalled_s, clock.stalls
    return res


class _Failed(Exception):
    pass


# --- figures and report (pure) -----------------------------------------------------------------

def percentile(xs: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no figures."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


@dataclass(frozen=True, slots=True)
class LoadFigures:
    """The run's viewer-side figures. A viewer with no first segment counts as slower than any
    in the startup percentiles (a failure never improves them): ``inf``."""

    viewers: int
    started: int
    failed: int
    startup_p50_s: float | None
    startup_p95_s: float | None
    rebuffer_ratio: float | None
    stalls: int
    viewers_stalled: int
    segments: int
    bytes: int
    per_pop: dict[str, int] = field(default_factory=dict)


def summarise_viewers(results: Sequence[ViewerResult]) -> LoadFigures:
    starts = [r.startup_s if r.startup_s is not None else math.inf for r in results]
    played = sum(r.played_s for r in results)
    stalled = sum(r.stalled_s for r in results)
    per_pop: dict[str, int] = {}
    for r in results:
        per_pop[r.pop] = per_pop.get(r.pop, 0) + 1
    p50, p95 = percentile(starts, 50), percentile(starts, 95)
    return LoadFigures(viewers=len(results), started=sum(r.startup_s is not None for r in results),
                       failed=sum(bool(r.error) for r in results),
                       startup_p50_s=None if p50 in (None, math.inf) else p50,
                       startup_p95_s=None if p95 in (None, math.inf) else p95,
                       rebuffer_ratio=stalled / (played + stalled) if played + stalled else None,
                       stalls=sum(r.stalls for r in results), viewers_stalled=sum(r.stalls > 0 for r in results),
                       segments=sum(r.segments for r in results), bytes=sum(r.bytes for r in results),
                       per_pop=per_pop)


def _s(x: float | None) -> str:
    return "none" if x is None else f"{x * 1000:.0f} ms"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f} %"


def render_load(f: LoadFigures, tiers: Sequence[TierFigure], *, titles: int, clip_s: int, watch_s: float,
                wall_s: float, gen_cpu_s: float, lag_p95_s: float | None, load_start: str, load_end: str,
                cpus: int | None, errors: Sequence[str] = (), prediction: str = "",
                daemon_cpu_s: dict[str, float] | None = None) -> str:
    """The printed report: viewers, tiers, the generator's own load and the daemons' (CPU
    seconds during the run: what saturated first), then the simulator's prediction for the same
    scenario (when there is one)."""
    pops = ", ".join(f"{k} {v}" for k, v in sorted(f.per_pop.items()))
    lines = [f"playback load: {f.viewers} viewers ({pops}), Zipf over {titles} titles of {clip_s} s, "
             f"each watching up to {watch_s:.0f} s in real time; HLS video rung, signed URLs",
             f"load average {load_start} at the start, {load_end} at the end; {cpus or '?'} CPUs", "",
             f"startup (master playlist -> first segment)  p50 {_s(f.startup_p50_s)}, p95 {_s(f.startup_p95_s)}"
             f"  ({f.started}/{f.viewers} started, {f.failed} failed)",
             f"rebuffer ratio                              {_pct(f.rebuffer_ratio)} of watch time "
             f"({f.stalls} stalls, {f.viewers_stalled} viewers stalled)",
             f"viewer fetches                              {f.segments} segments, {f.bytes / 1e6:.1f} MB "
             f"({f.bytes * 8 / wall_s / 1e6:.2f} Mbit/s over {wall_s:.0f} s)", "",
             f"{'tier':<10} {'requests':>9} {'hit ratio':>10} {'byte hit':>9} {'egress MB':>10} {'origin fetches':>15}"]
    for t in tiers:
        lines.append(f"{t.tier:<10} {t.requests:>9.0f} {_pct(t.hit_ratio):>10} {_pct(t.byte_hit_ratio):>9} "
                     f"{t.bytes / 1e6:>10.2f} {t.origin_fetches:>15.0f}")
    origin = sum(t.origin_fetches for t in tiers)
    miss_bytes = sum(t.bytes - t.hit_bytes for t in tiers if t.tier == "shield")
    lines += [f"origin: {origin:.0f} fetches, ~{miss_bytes / 1e6:.2f} MB (the shield's misses)", "",
              f"generator: {gen_cpu_s:.1f} CPU s over {wall_s:.0f} s wall ({gen_cpu_s / wall_s * 100:.0f} % of a "
              f"core); pacing sleeps woke late by p95 {_s(lag_p95_s)}"]
    if lag_p95_s is not None and lag_p95_s > LAG_WARNING_S:
        lines.append(f"WARNING: the generator's sleeps woke late by more than {_s(LAG_WARNING_S)} (p95): its own "
                     f"CPU share (the generator or the machine) is inside the startup and rebuffer figures")
    if daemon_cpu_s:
        lines.append("daemons: " + ", ".join(f"{n} {c:.1f} CPU s ({c / wall_s * 100:.0f} %)"
                                             for n, c in daemon_cpu_s.items()))
    if errors:
        lines.append("errors (first few): " + "; ".join(errors[:5]))
    if prediction:
        lines += ["", prediction]
    return "\n".join(lines)


def scenario_toml(*, titles: int, clip_s: int, segment_s: float, viewers: int, ladder_kbps: Sequence[float],
                  alpha: float, watch_s: float, ramp_s: float, pops: Sequence[str], regionals: Sequence[str],
                  shields: Sequence[str], seed: int = 1) -> str:
    """The simulator's scenario for the same run (docs/simulate.md): ``titles`` of ``clip_s``,
    the ladder's rungs equally likely, ``viewers`` concurrent at a flat diurnal curve, every
    session watching to the end, one region with these POPs, regionals and shields, unsampled.

    The window is the bench's run (the ramp and one watch) with no warm-up: every cache starts
    empty, as the bench's do. It is not the same arrival process: the simulator keeps
    ``viewers`` concurrent by Little's law (sessions arrive throughout, and those begun before
    the window join mid-title), where the bench starts N viewers once over the ramp."""
    share = 1 / len(ladder_kbps)
    rungs = "".join(f'\n[[media.ladder]]\nname = "r{i}"\nkbps = {k:g}\nshare = {share!r}\n'
                    for i, k in enumerate(ladder_kbps))
    q = ", ".join(f'"{x}"' for x in pops)
    return f"""name = "bench-playback-{viewers}"
seed = {seed}

[sampling]
rate = 1.0

[window]
start = "20:00"
duration = "{math.ceil(watch_s + ramp_s)}s"
warmup = "0s"

[catalogue]
titles = {titles}
new_per_day = 0
zipf_alpha = {alpha}
runtime_median = "{clip_s}s"
runtime_sigma = 0
runtime_min = "{clip_s}s"
runtime_max = "{clip_s}s"

[media]
segment = "{segment_s:g}s"
ttl = "1d"
{rungs}
[viewers]
mau = {max(viewers * 10, 10)}
peak_concurrent = {viewers}
diurnal = [{", ".join(["1.0"] * 24)}]
early_share = 0
complete_share = 1

[tiers]
policy = "s3fifo"
pop_ram = "16MiB"
pop_disk = "64MiB"
regional = "64MiB"
shield = "64MiB"
shields = [{", ".join(f'"{x}"' for x in shields)}]

[[region]]
name = "bench"
population = 1
pops = [{q}]
regionals = [{", ".join(f'"{x}"' for x in regionals)}]
"""


def session_cpu_seconds(sid: int, proc: str = "/proc") -> float:
    """User + system CPU seconds of every live process in session ``sid`` (a daemon and the
    workers it forked: each daemon is started as its own session's leader)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After "pid (comm)": state ppid pgrp session ... utime (14th field overall) stime.
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


# --- the run ------------------------------------------------------------------------------------

async def run_viewers(targets: Sequence[Target], *, watch_s: float, ahead_s: float, ramp_s: float, seed: int,
                      timeout_s: float = 20.0) -> tuple[list[ViewerResult], list[float]]:
    """Every target played by one viewer, their starts spread evenly over ``ramp_s``; the
    results and the pacing sleeps' lateness. One aiohttp connection pool per POP, as many
    connections as viewers on it (each viewer holds at most one request at a time); the CDN's
    name in Host, as a resolver would have sent the viewer to that address."""
    import aiohttp

    rng = random.Random(seed)
    lag: list[float] = []
    by_pop: dict[str, aiohttp.ClientSession] = {}
    for t in targets:
        if t.base not in by_pop:
            n = sum(x.base == t.base for x in targets)
            by_pop[t.base] = aiohttp.ClientSession(
                base_url=t.base, connector=aiohttp.TCPConnector(limit=n, limit_per_host=n),
                timeout=aiohttp.ClientTimeout(total=timeout_s), auto_decompress=False)

    async def viewer(i: int, t: Target, pick: float) -> ViewerResult:
        await asyncio.sleep(ramp_s * i / max(len(targets), 1))
        session, headers = by_pop[t.base], {"Host": t.host}

        async def get(pq: str) -> tuple[int, bytes, str]:
            async with session.get(pq, headers=headers, skip_auto_headers=("Accept-Encoding",)) as r:
                return r.status, await r.read(), r.headers.get("x-cache", "")

        return await play_one(get, t, pick, watch_s=watch_s, ahead_s=ahead_s, lag=lag)

    try:
        results = await asyncio.gather(*(viewer(i, t, rng.random()) for i, t in enumerate(targets)))
    finally:
        for c in by_pop.values():
            await c.close()
    return list(results), lag


def pick_titles(titles: Sequence[int], n: int, *, alpha: float, rng: random.Random) -> list[int]:
    """``n`` titles drawn by Zipf rank (``titles[0]`` the most popular)."""
    cum, acc = [], 0.0
    for w in zipf_weights(len(titles), alpha):
        acc += w
        cum.append(acc)
    return [titles[min(bisect.bisect_left(cum, rng.random() * acc), len(titles) - 1)] for _ in range(n)]
