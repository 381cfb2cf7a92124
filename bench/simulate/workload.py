"""The workload generator: a scenario's viewers as a time-ordered, SHARDS-sampled request stream.

Model (every number from the scenario):

- Catalogue: ``titles`` titles plus ``new_per_day`` releases a day; on day ``d`` the releases
  take the top popularity ranks, newest first, and every older title moves down (daily churn).
  A session picks a rank with Zipf probability ``1 / rank^alpha``. Runtimes are log-normal.
- Sessions arrive as a Poisson process whose rate follows the diurnal curve: by Little's law,
  ``arrivals/s = concurrent(t) / mean session length``, the mean measured from the generator's
  own draws. Sessions that started before the window (up to one maximum runtime earlier) are
  generated too and join mid-title, so the window starts at its steady-state concurrency.
- A session: a region by population, one of its POPs, a title, a rung of the ABR ladder by
  share, a client bandwidth (log-normal), and how long it watches (abandonment: early leavers,
  completers, the rest uniform over the runtime). It fetches the title's manifest, then
  segments 0, 1, 2, ... in order, segment ``i`` when playback reaches it (``start + i *
  segment``), all at its rung.
- Only SHARDS-sampled objects' requests are generated (``shards.py``): the sampled segment
  indices of each (title, rung) are found once, and each session's requests are cut out of them
  with ``searchsorted``, so the unsampled stream is never built.

Everything is drawn from one ``numpy.random.Generator`` seeded by the scenario's seed: the same
scenario gives the same stream, byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .scenario import Scenario
from .shards import Shards

__all__ = ["Requests", "generate", "object_path", "title_of", "rung_of", "segment_of",
           "SEG_BITS", "TITLE_SHIFT", "MANIFEST_SEGMENT", "zipf_weights", "diurnal_at"]

SEG_BITS = 24                      # segment index bits of an object id
TITLE_SHIFT = 28                   # id = title << 28 | (rung + 1) << 24 | segment; rung 0 field: manifest
MANIFEST_SEGMENT = 0
_SEG_MASK = (1 << SEG_BITS) - 1
_CHUNK_SESSIONS = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Requests:
    """The sampled request stream, in time order (arrays of one length), and what was generated.

    ``obj`` indexes ``object_ids`` (every sampled object, requested or not); ``first`` marks a session's segment 0 and
    ``manifest`` its manifest fetch; ``client_mbps`` is the session's bandwidth (for startup).
    ``concurrency`` holds viewers watching at each minute of the window (all, not sampled).
    """

    time: np.ndarray
    pop: np.ndarray
    obj: np.ndarray
    size: np.ndarray
    first: np.ndarray
    manifest: np.ndarray
    client_mbps: np.ndarray
    object_ids: np.ndarray
    sessions: int
    concurrency: np.ndarray
    rate: float

    def __len__(self) -> int:
        return len(self.time)


def title_of(object_id: int) -> int:
    return object_id >> TITLE_SHIFT


def rung_of(object_id: int) -> int:
    """The ladder rung (0-based) of a segment, -1 for a manifest."""
    return ((object_id >> SEG_BITS) & 0xF) - 1


def segment_of(object_id: int) -> int:
    return object_id & _SEG_MASK


def object_path(object_id: int, scenario: Scenario) -> str:
    """The URL path a player requests for an object (the cache key is built from it)."""
    title, rung = title_of(object_id), rung_of(object_id)
    if rung < 0:
        return f"/vod/t{title}/manifest.mpd"
    return f"/vod/t{title}/{scenario.media.ladder[rung].name}/{segment_of(object_id):05d}.m4s"


def zipf_weights(n: int, alpha: float) -> np.ndarray:
    """Unnormalised popularity of ranks 1..n."""
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** alpha


def diurnal_at(curve: tuple[float, ...], hour_of_day: np.ndarray) -> np.ndarray:
    """The diurnal curve (24 hourly points) interpolated at fractional hours, wrapping at 24."""
    h = np.mod(hour_of_day, 24.0)
    pts = np.asarray(curve + (curve[0],))
    return np.interp(h, np.arange(25.0), pts)


def _watch_seconds(rng: np.random.Generator, runtime: np.ndarray, sc: Scenario) -> np.ndarray:
    v = sc.viewers
    u = rng.random(len(runtime))
    early = rng.exponential(v.early_mean_s, len(runtime))
    partial = rng.random(len(runtime)) * runtime
    watch = np.where(u < v.early_share, np.minimum(early, runtime),
                     np.where(u < v.early_share + v.complete_share, runtime, partial))
    return np.maximum(watch, 1.0)


class _InverseCdf:
    """Draws indices with probability proportional to ``weights`` by inverting the CDF: a
    table of 2^16 buckets of ``u`` answers most draws, ``searchsorted`` the rest (a random
    ``searchsorted`` over millions of draws was the generator's slowest step)."""

    _BUCKETS = 1 << 16

    def __init__(self, weights: np.ndarray) -> None:
        cdf = np.cumsum(weights)
        self.cdf = cdf / cdf[-1]
        self.last = len(weights) - 1
        edges = np.arange(self._BUCKETS + 1, dtype=np.float64) / self._BUCKETS
        at = np.minimum(np.searchsorted(self.cdf, edges, side="right"), self.last)
        self.lo, self.hi = at[:-1], at[1:]

    def draw(self, u: np.ndarray) -> np.ndarray:
        b = np.minimum((u * self._BUCKETS).astype(np.int64), self._BUCKETS - 1)
        out = self.lo[b]
        slow = out != self.hi[b]
        if slow.any():
            out[slow] = np.minimum(np.searchsorted(self.cdf, u[slow], side="right"), self.last)
        return out


def generate(sc: Scenario, *, rate: float | None = None, progress=None) -> Requests:
    """The sampled request stream of ``sc`` (``rate`` overrides its SHARDS rate)."""
    shards = Shards.at_rate(sc.sampling_rate if rate is None else rate)
    rng = np.random.default_rng(sc.seed)
    cat, media, win, view = sc.catalogue, sc.media, sc.window, sc.viewers
    seg_s = media.segment_s
    n_rungs = len(media.ladder)
    window_start = win.start_h * 3600.0
    n_days = int(math.floor((window_start + win.duration_s) / 86400.0)) + 1
    n_titles = cat.titles + cat.new_per_day * n_days

    # Titles: runtimes and their number of segments.
    runtime = np.exp(rng.normal(math.log(cat.runtime_median_s), cat.runtime_sigma, n_titles))
    runtime = np.clip(runtime, cat.runtime_min_s, cat.runtime_max_s)
    n_seg = np.ceil(runtime / seg_s).astype(np.int64)
    if n_seg.max() >= 1 << SEG_BITS:
        raise ValueError("a title has more than 2^24 segments: use longer segments")

    # The sampled keys, as one sorted array of (title * rungs + rung) << 24 | segment.
    flat_parts = []
    titles_per_chunk = max(1, 4_000_000 // (n_rungs * int(n_seg.mean()) + 1))
    for t0 in range(0, n_titles, titles_per_chunk):
        t1 = min(n_titles, t0 + titles_per_chunk)
        tr = np.arange(t0 * n_rungs, t1 * n_rungs, dtype=np.int64)
        counts = np.repeat(n_seg[t0:t1], n_rungs)
        starts = np.cumsum(counts) - counts
        tr_rep = np.repeat(tr, counts)
        seg = np.arange(counts.sum(), dtype=np.int64) - np.repeat(starts, counts)
        title = tr_rep // n_rungs
        ids = (title << TITLE_SHIFT) | ((tr_rep % n_rungs + 1) << SEG_BITS) | seg
        keep = shards.keep(ids)
        flat_parts.append((tr_rep[keep] << SEG_BITS) | seg[keep])
    flat = np.concatenate(flat_parts) if flat_parts else np.zeros(0, np.int64)
    manifest_ids = np.arange(n_titles, dtype=np.int64) << TITLE_SHIFT
    manifest_kept = shards.keep(manifest_ids)
    manifest_index = np.cumsum(manifest_kept) - 1
    # Every sampled object's id: the segments' (in flat's order), then the manifests'.
    tr_all = flat >> SEG_BITS
    object_ids = np.concatenate([
        ((tr_all // n_rungs) << TITLE_SHIFT) | ((tr_all % n_rungs + 1) << SEG_BITS) | (flat & _SEG_MASK),
        manifest_ids[manifest_kept]])

    # Popularity by day: on day d the newest releases hold the top ranks.
    weights = zipf_weights(n_titles, cat.zipf_alpha)

    def title_for_rank(rank: np.ndarray, day: int) -> np.ndarray:
        released = cat.new_per_day * (day + 1)
        return np.where(rank < released, cat.titles + released - 1 - rank, rank - released)

    samplers: dict[int, _InverseCdf] = {}

    def draw_titles(day: np.ndarray) -> np.ndarray:
        out = np.empty(len(day), dtype=np.int64)
        for d in np.unique(day):
            sel = day == d
            d = int(d)
            if d not in samplers:
                samplers[d] = _InverseCdf(weights[:cat.titles + cat.new_per_day * (d + 1)])
            out[sel] = title_for_rank(samplers[d].draw(rng.random(int(sel.sum()))), d)
        return out

    # Mean session length (Little's law), from the same draws the sessions use.
    probe_titles = draw_titles(np.zeros(100_000, dtype=np.int64) + n_days - 1)
    mean_session = float(_watch_seconds(rng, runtime[probe_titles], sc).mean())

    # Arrivals per minute from one maximum runtime before the window to its end.
    lead = float(cat.runtime_max_s)
    bins = np.arange(-lead, win.duration_s, 60.0)
    concurrent = view.peak_concurrent * diurnal_at(view.diurnal, (window_start + bins + 30) / 3600.0)
    arrivals = rng.poisson(concurrent / mean_session * 60.0)
    total_sessions = int(arrivals.sum())

    region_p = np.array([r.population for r in sc.regions])
    pop_region = np.concatenate([np.full(len(r.pops), i) for i, r in enumerate(sc.regions)])
    pop_p = region_p[pop_region] / np.bincount(pop_region)[pop_region]
    pop_sampler = _InverseCdf(pop_p)
    rung_sampler = _InverseCdf(np.array([r.share for r in media.ladder]))
    rung_bytes = np.array([r.kbps * 1000 / 8 * seg_s for r in media.ladder], dtype=np.int64)
    n_minutes = int(math.ceil(win.duration_s / 60.0))
    conc = np.zeros(n_minutes + 2, dtype=np.int64)

    parts: list[tuple[np.ndarray, ...]] = []
    bin_idx = np.repeat(np.arange(len(bins)), arrivals)
    for c0 in range(0, total_sessions, _CHUNK_SESSIONS):
        c1 = min(total_sessions, c0 + _CHUNK_SESSIONS)
        n = c1 - c0
        start = bins[bin_idx[c0:c1]] + rng.random(n) * 60.0
        day = np.floor((window_start + np.maximum(start, 0.0)) / 86400.0).astype(np.int64)
        title = draw_titles(day)
        watch = _watch_seconds(rng, runtime[title], sc)
        end = start + watch
        # Sessions over before the window starts leave no trace: drop them before the rest.
        alive = end > 0
        start, title, watch, end = start[alive], title[alive], watch[alive], end[alive]
        n = len(start)
        rung = rung_sampler.draw(rng.random(n))
        pop = pop_sampler.draw(rng.random(n))
        mbps = np.exp(rng.normal(math.log(sc.latency.client_mbps_median),
                                 sc.latency.client_mbps_sigma, n))
        # Concurrency by minute (all sessions, for the report's check of the generator).
        a = np.clip(np.floor(start / 60.0).astype(np.int64) + 1, 0, n_minutes)
        b = np.clip(np.floor(end / 60.0).astype(np.int64) + 1, 0, n_minutes + 1)
        np.add.at(conc, a, 1)
        np.add.at(conc, b, -1)
        # Segments [lo, hi): from the first one played inside the window to the last one
        # watched before the window ends.
        lo = np.maximum(0, np.ceil(-start / seg_s)).astype(np.int64)
        hi = np.minimum(np.ceil(watch / seg_s), n_seg[title]).astype(np.int64)
        hi = np.minimum(hi, np.ceil((win.duration_s - start) / seg_s).astype(np.int64))
        hi = np.maximum(hi, lo)
        base = (title * n_rungs + rung) << SEG_BITS
        k_lo = np.searchsorted(flat, base + lo)
        k_hi = np.searchsorted(flat, base + hi)
        counts = k_hi - k_lo
        sess = np.repeat(np.arange(n), counts)
        pos = k_lo[sess] + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        seg = flat[pos] & _SEG_MASK
        ev_time = start[sess] + seg * seg_s
        ev_first = (seg == 0) & (start[sess] >= 0)
        # Manifests: one per session that starts inside the window, if its title is sampled.
        m = (start >= 0) & manifest_kept[title]
        m_obj = len(flat) + manifest_index[title[m]]
        parts.append((
            np.concatenate([ev_time, start[m]]),
            np.concatenate([pop[sess], pop[m]]).astype(np.int32),
            np.concatenate([pos, m_obj]),
            np.concatenate([rung_bytes[rung[sess]], np.full(len(m_obj), media.manifest_bytes)]),
            np.concatenate([ev_first, np.zeros(len(m_obj), bool)]),
            np.concatenate([np.zeros(len(pos), bool), np.ones(len(m_obj), bool)]),
            np.concatenate([mbps[sess], mbps[m]]).astype(np.float32),
        ))
        if progress is not None:
            progress(c1 - c0, total_sessions)

    cols = [np.concatenate([p[i] for p in parts]) for i in range(7)] if parts else \
        [np.zeros(0, t) for t in (np.float64, np.int32, np.int64, np.int64, bool, bool, np.float32)]
    order = np.argsort(cols[0], kind="stable")
    cols = [c[order] for c in cols]
    return Requests(time=cols[0], pop=cols[1], obj=cols[2].astype(np.int64), size=cols[3],
                    first=cols[4], manifest=cols[5], client_mbps=cols[6], object_ids=object_ids,
                    sessions=total_sessions, concurrency=np.cumsum(conc)[1:n_minutes + 1], rate=shards.rate)
