"""PNG charts of a run and of a sweep (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .engine import LEVELS  # noqa: E402
from .report import Summary  # noqa: E402

__all__ = ["plot_run", "plot_sweep"]


def plot_run(s: Summary, out: Path) -> list[Path]:
    """Hit ratios per tier and where requests were served: ``tiers.png``."""
    out.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [t.name for t in s.tiers]
    x = range(len(names))
    a.bar([i - 0.2 for i in x], [100 * t.request_hit_ratio for t in s.tiers], 0.4, label="request hit")
    a.bar([i + 0.2 for i in x], [100 * t.byte_hit_ratio for t in s.tiers], 0.4, label="byte hit")
    a.set_xticks(list(x), names)
    a.set_ylim(0, 100)
    a.set_ylabel("hit ratio of the requests reaching the tier (%)")
    a.set_title("Hit ratio per tier")
    a.legend(loc="upper left")
    b.bar(LEVELS, [100 * x for x in s.served_share], color="tab:green")
    for i, v in enumerate(s.served_share):
        b.text(i, 100 * v + 1, f"{100 * v:.1f} %", ha="center")
    b.set_ylim(0, 100)
    b.set_ylabel("share of viewers' requests (%)")
    b.set_title(f"Served by (origin {s.origin_gbps:,.1f} Gbit/s of {s.egress_gbps:,.0f} Gbit/s egress)")
    fig.suptitle(f"{s.scenario}: {s.policy}, segment {s.segment_s:g} s, TTL {s.ttl_s:g} s")
    fig.tight_layout()
    path = out / "tiers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        for unit, div in (("d", 86400), ("h", 3600), ("min", 60)):
            if v >= div and v % div == 0:
                return f"{v / div:g} {unit}"
        return f"{v:g} s"
    return str(v)


def plot_sweep(points: Sequence[dict[str, Any]], summaries: Sequence[Summary], out: Path) -> list[Path]:
    """For each swept parameter, the cost figures against it (one line per value of the
    others): ``sweep-<name>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(points[0]) if points else []
    metrics = [
        ("origin requests/s", lambda s: s.origin_requests_per_s, "log"),
        ("origin Gbit/s", lambda s: s.origin_gbps, "linear"),
        ("viewer fetches/s", lambda s: s.client_requests_per_s, "linear"),
        ("startup p50 / p95 (s)", None, "linear"),
    ]
    paths = []
    for name in names:
        others = [n for n in names if n != name]
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(points):
            groups.setdefault(tuple(p[o] for o in others), []).append(i)
        xs_all = sorted({p[name] for p in points}, key=lambda v: (isinstance(v, str), v))
        numeric = all(isinstance(v, float) for v in xs_all)
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.3 * len(metrics), 4))
        for ax, (title, fn, scale) in zip(axes, metrics):
            for key, idx in groups.items():
                idx = sorted(idx, key=lambda i: xs_all.index(points[i][name]))
                xs = [points[i][name] if numeric else xs_all.index(points[i][name]) for i in idx]
                tag = ", ".join(f"{o}={_fmt(v)}" for o, v in zip(others, key)) or name
                if fn is None:
                    line, = ax.plot(xs, [summaries[i].startup_p50_s for i in idx], marker="o", label=f"{tag} p50")
                    ax.plot(xs, [summaries[i].startup_p95_s for i in idx], marker="^", linestyle="--",
                            color=line.get_color(), label=f"{tag} p95")
                else:
                    ax.plot(xs, [fn(summaries[i]) for i in idx], marker="o", label=tag)
            ax.set_title(title)
            ax.set_xlabel(name + (" (s)" if numeric else ""))
            if numeric and name == "ttl":
                ax.set_xscale("log")
            if scale == "log":
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            if not numeric:
                ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        axes[-1].legend(fontsize=6, loc="best")
        fig.suptitle(f"{summaries[0].scenario}: cost of {name}")
        fig.tight_layout()
        path = out / f"sweep-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
