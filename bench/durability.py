"""`python -m headwater.bench durability`: annual object-loss probability per redundancy scheme.

A continuous-time Markov chain per placement group (the k + m disks one object's fragments live
on) gives the mean time to data loss (MTTDL), solved exactly with fractions; the annual loss
probability follows from it, for one object and for a cluster of independent groups. The table
puts nines of durability beside storage overhead: the replication vs erasure-coding trade-off.

The repair rate comes from this machine. When ``bench rebuild`` has run (it keeps its result in
``<data_dir>/bench/rebuild.json``; ``--measure-rebuild`` runs it now), the reconstructor's own
measured read rate is used: k surviving fragments read over RPC, zfec, written and fsynced on the
target, as a repair pass does it. Otherwise the ceiling a reconstructor could reach is used,
measured in the same run: zfec rebuild throughput through ``objstore.stripe.rebuild`` (one core)
and fsync'd write MB/s of the data directory. Either is capped by a configurable network share.
``--repair-mbps`` skips the measurement.

The model, its assumptions and its sources are in docs/durability.md. The maths section below is
pure (no I/O, no clock); measuring and printing live at the bottom.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

__all__ = [
    "HOURS_PER_YEAR", "Scheme", "Chain", "Repair", "Outcome", "DEFAULT_SCHEMES",
    "parse_scheme", "hourly_rate", "stripe_chain", "mttdl_hours", "mttdl_approx_hours",
    "annual_loss", "cluster_annual_loss", "nines", "repair_hours", "evaluate", "main",
]

HOURS_PER_YEAR = 8760
MB = 1e6
TB = 1e12
MiB = 1024 * 1024


# --- the model (pure) --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Scheme:
    """A redundancy scheme: any ``k`` of ``k + m`` fragments rebuild the data.

    Replication x r is the case ``k = 1, m = r - 1``: every fragment is a whole copy.
    """

    k: int
    m: int

    def __post_init__(self) -> None:
        if self.k < 1 or self.m < 0:
            raise ValueError(f"a scheme needs k >= 1 and m >= 0, got k={self.k} m={self.m}")

    @property
    def n(self) -> int:
        return self.k + self.m

    @property
    def overhead(self) -> float:
        """Raw bytes stored per user byte (n / k)."""
        return self.n / self.k

    @property
    def replication(self) -> bool:
        return self.k == 1

    @property
    def name(self) -> str:
        return f"replication x{self.n}" if self.replication else f"EC {self.k}+{self.m}"


DEFAULT_SCHEMES: tuple[Scheme, ...] = (
    Scheme(k=1, m=1), Scheme(k=1, m=2), Scheme(k=4, m=2), Scheme(k=6, m=3),
    Scheme(k=8, m=4), Scheme(k=10, m=4), Scheme(k=17, m=3),
)


def parse_scheme(text: str) -> Scheme:
    """``"x3"`` / ``"rep3"`` (replication) or ``"4+2"`` / ``"EC 4+2"`` (erasure code)."""
    t = text.strip().lower().replace(" ", "")
    for prefix in ("replication", "rep", "x"):
        if t.startswith(prefix) and t[len(prefix):].lstrip("x").isdigit():
            r = int(t[len(prefix):].lstrip("x"))
            if r < 1:
                break
            return Scheme(k=1, m=r - 1)
    t = t.removeprefix("ec")
    k, sep, m = t.partition("+")
    if sep and k.isdigit() and m.isdigit():
        return Scheme(k=int(k), m=int(m))
    raise ValueError(f"cannot read scheme {text!r}: use x3 (replication) or 4+2 (EC)")


def hourly_rate(afr: float) -> float:
    """Per-hour failure rate of an exponential lifetime whose annual failure probability is ``afr``.

    ``-ln(1 - afr) / 8760``, which is ``afr / 8760`` to within 1 % for AFRs under 2 %.
    """
    if not 0 <= afr < 1:
        raise ValueError(f"an annual failure rate must be in [0, 1), got {afr}")
    return -math.log1p(-afr) / HOURS_PER_YEAR


def repair_hours(scheme: Scheme, *, disk_bytes: float, read_bytes_per_s: float,
                 write_bytes_per_s: float | None = None, detect_hours: float = 0.0) -> float:
    """Hours from a disk failing to its contents being whole again elsewhere.

    Rebuilding one disk's worth reads ``k`` times the disk (a whole copy for replication) at
    ``read_bytes_per_s`` and writes the disk once at ``write_bytes_per_s``; the two run as a
    pipeline, so the slower one sets the pace. Detection comes first.
    """
    if read_bytes_per_s <= 0 or (write_bytes_per_s is not None and write_bytes_per_s <= 0):
        raise ValueError("repair bandwidths must be positive")
    seconds = scheme.k * disk_bytes / read_bytes_per_s
    if write_bytes_per_s is not None:
        seconds = max(seconds, disk_bytes / write_bytes_per_s)
    return detect_hours + seconds / 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class Chain:
    """An absorbing CTMC over 'i fragments of a group are lost', i = 0..m; state m + 1 is loss.

    ``up[i]`` maps a jump size ``j >= 1`` to its rate out of state ``i`` (a jump past m lands in
    the loss state); ``down[i]`` is the repair rate from ``i`` to ``i - 1`` (``down[0]`` is 0).
    Rates are per hour, exact fractions of the float inputs.
    """

    m: int
    up: tuple[tuple[tuple[int, Fraction], ...], ...]
    down: tuple[Fraction, ...]

    @property
    def birth_death(self) -> bool:
        """True when every failure jump is one fragment (a tridiagonal chain)."""
        return all(j == 1 for row in self.up for j, _ in row)


def stripe_chain(scheme: Scheme, *, disk_rate: float, repair_rate: float, domain_rate: float = 0.0,
                 domains: int | None = None) -> Chain:
    """The chain of one placement group.

    Each of the ``n`` fragments sits on its own disk, failing at ``disk_rate``; ``i`` lost fragments
    are repaired one at a time at ``repair_rate`` (the canonical model's single repair process).
    Failure domains (hosts, racks) fail at ``domain_rate`` each. With ``domains`` None or at least
    ``n``, fragments are in distinct domains and a domain failure costs one fragment, like a disk.
    With fewer domains the fragments are spread evenly, and a domain failure takes all of its
    fragments at once, counted as if none of them had been lost before (an upper bound on harm).
    """
    n, m = scheme.n, scheme.m
    per_domain: list[int] = [1] * n
    if domains is not None and domains < n:
        if domains < 1:
            raise ValueError(f"domains must be >= 1, got {domains}")
        per_domain = [n // domains + (1 if d < n % domains else 0) for d in range(domains)]
    lam, dom, mu = Fraction(disk_rate), Fraction(domain_rate), Fraction(repair_rate)
    if lam < 0 or dom < 0 or mu < 0:
        raise ValueError("rates cannot be negative")
    up = []
    for i in range(m + 1):
        jumps: dict[int, Fraction] = {}
        if lam:
            jumps[1] = (n - i) * lam
        if dom:
            if per_domain == [1] * n:  # distinct domains: only the surviving fragments' domains count
                jumps[1] = jumps.get(1, Fraction(0)) + (n - i) * dom
            else:
                for size in per_domain:
                    jumps[size] = jumps.get(size, Fraction(0)) + dom
        up.append(tuple(sorted(jumps.items())))
    down = (Fraction(0),) + (mu,) * m
    return Chain(m=m, up=tuple(up), down=down)


def mttdl_hours(chain: Chain) -> Fraction:
    """Exact expected hours from 'nothing lost' to 'data lost' (the MTTDL) of ``chain``.

    Solves ``(q_i) T_i - sum_j q_ij T_j = 1`` for the m + 1 transient states with exact fractions
    (Gauss-Jordan on a matrix of at most a few dozen entries), so no floating-point cancellation
    creeps in however far apart failure and repair rates are. Raises ``ValueError`` when loss is
    unreachable (no failures at all).
    """
    size = chain.m + 1
    a = [[Fraction(0)] * (size + 1) for _ in range(size)]
    for i in range(size):
        a[i][size] = Fraction(1)
        for j, rate in chain.up[i]:
            r = Fraction(rate)
            a[i][i] += r
            if i + j <= chain.m:
                a[i][i + j] -= r
        if i > 0 and chain.down[i]:
            r = Fraction(chain.down[i])
            a[i][i] += r
            a[i][i - 1] -= r
    for col in range(size):
        pivot = next((r for r in range(col, size) if a[r][col] != 0), None)
        if pivot is None:
            raise ValueError("data loss is unreachable in this chain (no failure rate)")
        a[col], a[pivot] = a[pivot], a[col]
        p = a[col][col]
        a[col] = [x / p for x in a[col]]
        for r in range(size):
            if r != col and a[r][col] != 0:
                f = a[r][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col])]
    return a[0][size]


def mttdl_approx_hours(scheme: Scheme, *, disk_rate: float, repair_rate: float) -> float:
    """The textbook approximation ``mu^m / (n (n-1) ... (n-m) lambda^(m+1))``, for mu >> lambda."""
    falling = math.prod(scheme.n - i for i in range(scheme.m + 1))
    return repair_rate ** scheme.m / (falling * disk_rate ** (scheme.m + 1))


def annual_loss(mttdl: float) -> float:
    """Probability of loss within a year, losses arriving as a Poisson process of mean ``mttdl`` h."""
    return -math.expm1(-HOURS_PER_YEAR / float(mttdl))


def cluster_annual_loss(p_group: float, groups: int) -> float:
    """Probability that at least one of ``groups`` independent groups loses data in a year."""
    if p_group >= 1:
        return 1.0
    return -math.expm1(groups * math.log1p(-p_group))


def nines(p_loss: float) -> float:
    """Durability nines: ``-log10(p)`` (99.9 % durable is 3 nines); inf when ``p`` is 0."""
    return math.inf if p_loss <= 0 else -math.log10(p_loss)


@dataclass(frozen=True, slots=True, kw_only=True)
class Repair:
    """What bounds the rebuild of one disk, in bytes per second (None: not a bound)."""

    read_bytes_per_s: float
    write_bytes_per_s: float | None = None
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One row of the report."""

    scheme: str
    k: int
    m: int
    fragments: int
    overhead: float
    tolerates: int
    repair_read_mbps: float    # effective: k x disk bytes / transfer time (fsync may be the bound)
    repair_hours: float
    mttdl_years: float
    groups: int
    p_loss_object: float       # one object (one placement group), per year
    nines: float
    p_loss_cluster: float      # any object anywhere in the cluster, per year
    cluster_nines: float


def evaluate(scheme: Scheme, repair: Repair, *, afr: float, disk_bytes: float, disks: int,
             detect_hours: float, domain_afr: float = 0.0, domains: int | None = None) -> Outcome:
    """Durability of ``scheme`` on a cluster of ``disks`` disks of ``disk_bytes`` each.

    The cluster holds ``disks // n`` independent, disjoint placement groups (at least one): each
    disk in exactly one group, as in Backblaze's tomes or a minimal copyset layout.
    """
    hours = repair_hours(scheme, disk_bytes=disk_bytes, read_bytes_per_s=repair.read_bytes_per_s,
                         write_bytes_per_s=repair.write_bytes_per_s, detect_hours=detect_hours)
    chain = stripe_chain(scheme, disk_rate=hourly_rate(afr), repair_rate=1 / hours,
                         domain_rate=hourly_rate(domain_afr), domains=domains)
    mttdl = float(mttdl_hours(chain))
    p = annual_loss(mttdl)
    groups = max(1, disks // scheme.n)
    pc = cluster_annual_loss(p, groups)
    return Outcome(scheme=scheme.name, k=scheme.k, m=scheme.m, fragments=scheme.n,
                   overhead=scheme.overhead, tolerates=scheme.m,
                   repair_read_mbps=scheme.k * disk_bytes / ((hours - detect_hours) * 3600) / MB,
                   repair_hours=hours,
                   mttdl_years=mttdl / HOURS_PER_YEAR, groups=groups, p_loss_object=p,
                   nines=nines(p), p_loss_cluster=pc, cluster_nines=nines(pc))


# --- measuring this machine --------------------------------------------------------------------

def measure_rebuild(scheme: Scheme, *, stripe_bytes: int = 1 * MiB, seconds: float = 0.25,
                    bursts: int = 3) -> float:
    """zfec rebuild of one lost data fragment through ``objstore.stripe.rebuild``, bytes of
    surviving fragments read per second, one core (replication is zfec with k = 1: a copy).

    The best of ``bursts`` short bursts sharing ``seconds``: a ceiling, so the burst least slowed
    by whatever else runs on the machine is the one to keep.
    """
    from headwater.objstore import stripe
    from headwater.objstore.config import ErasureScheme

    if scheme.m == 0:
        raise ValueError("a scheme without redundancy cannot rebuild")
    es = ErasureScheme(k=scheme.k, m=scheme.m, stripe_bytes=stripe_bytes)
    blocks = stripe.encode(es, os.urandom(stripe_bytes))
    have = {i: bytes(blocks[i]) for i in range(1, es.k + 1)}  # block 0 lost: a real decode
    if stripe.rebuild(es, have, [0])[0] != bytes(blocks[0]):
        raise AssertionError(f"{scheme.name}: rebuild did not give the lost block back")
    read = sum(len(b) for b in have.values())
    best = 0.0
    for _ in range(max(1, bursts)):
        count, t0 = 0, time.perf_counter()
        while True:
            stripe.rebuild(es, have, [0])
            count += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / max(1, bursts):
                break
        best = max(best, count * read / elapsed)
    return best


def measure_fsync(directory: Path, *, total_bytes: int = 32 * MiB) -> float:
    """fsync'd 1 MiB file writes in ``directory``, bytes per second (bench/ceilings.py)."""
    from .ceilings import fsync_writes

    return fsync_writes(directory, total_bytes=total_bytes).value * MB


# --- the command -------------------------------------------------------------------------------

def _default_profile(config: str | None) -> tuple[Scheme, str]:
    """The cluster.toml default scheme ([objstore.ec]) and where it came from."""
    from headwater import config as hwconfig

    try:
        cfg = hwconfig.load(config)
    except Exception as e:  # noqa: BLE001 - fall back to the built-in default and say so
        d = hwconfig.ErasureScheme()
        return Scheme(k=d.k, m=d.m), f"built-in default ({e})"
    ec = cfg.objstore.ec
    return Scheme(k=ec.k, m=ec.m), str(cfg.path or config or "cluster.toml")


def _data_dir(config: str | None, override: Path | None) -> Path:
    """Where to time fsync'd writes: the cluster's data_dir, or its nearest existing parent (the
    same disk before the cluster first starts)."""
    if override is not None:
        return override
    try:
        from headwater import config as hwconfig
        d = hwconfig.load(config).data_dir
    except Exception:  # noqa: BLE001 - any directory on the data disk will do for the ceiling
        d = Path.cwd()
    for candidate in (d, *d.parents):
        if candidate.is_dir() and os.access(candidate, os.W_OK):
            return candidate
    return Path(tempfile.gettempdir())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m headwater.bench durability",
                                description="Annual object-loss probability per redundancy scheme "
                                            "(Markov model, repair rate from this machine).")
    p.add_argument("--afr", type=float, default=0.0144,
                   help="disk annual failure rate (default 0.0144: Backblaze-like 1.44 %%)")
    p.add_argument("--disk-tb", type=float, default=16.0, help="disk size, TB of 10^12 bytes (default 16)")
    p.add_argument("--disks", type=int, default=600, help="disks in the cluster (default 600)")
    p.add_argument("--detect-hours", type=float, default=0.5,
                   help="hours before a failed disk's repair starts (default 0.5)")
    p.add_argument("--repair-mbps", type=float, default=None,
                   help="repair read bandwidth per failed disk, MB/s; skips the measurement")
    p.add_argument("--measure-rebuild", action="store_true",
                   help="run the reconstructor benchmark (bench rebuild) now and use its rate")
    p.add_argument("--no-saved-rebuild", action="store_true",
                   help="ignore a saved `bench rebuild` result; use the machine's ceilings")
    p.add_argument("--network-mbps", type=float, default=1250.0,
                   help="network share a repair may use, MB/s (default 1250: one 10 GbE link)")
    p.add_argument("--domain-afr", type=float, default=0.0,
                   help="annual failure rate of one failure domain (host/rack), default 0 (off)")
    p.add_argument("--domains", type=int, default=None,
                   help="failure domains a group's fragments spread over (default: one per fragment)")
    p.add_argument("--schemes", default=None,
                   help="comma-separated, e.g. 'x3,4+2,8+4' (default: x2,x3,4+2,6+3,8+4,10+4,17+3 "
                        "and the cluster.toml profile)")
    p.add_argument("--config", default=None, help="cluster.toml for the default profile and data dir")
    p.add_argument("--data-dir", type=Path, default=None, help="where to time fsync'd writes")
    p.add_argument("--seconds", type=float, default=0.25, help="seconds per scheme for the zfec rebuild measurement (best of 3 bursts)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write results as JSON")
    return p


def _fmt_p(p: float) -> str:
    return "0" if p == 0 else f"{p:.2e}"


def _fmt_years(y: float) -> str:
    return f"{y:.3g}" if y < 1e6 else f"{y:.2e}"


def _table(rows: list[Outcome], default: Scheme, bounds: list[str]) -> str:
    headers = ["scheme", "overhead", "fragments", "tolerates", "repair MB/s", "bound", "repair h",
               "MTTDL years", "P(loss)/yr object", "nines", "P(any loss)/yr cluster", "groups"]
    cells = [[r.scheme + (" *" if (r.k, r.m) == (default.k, default.m) else ""),
              f"{r.overhead:.2f}x", str(r.fragments), str(r.tolerates), f"{r.repair_read_mbps:.0f}",
              b, f"{r.repair_hours:.1f}", _fmt_years(r.mttdl_years), _fmt_p(r.p_loss_object),
              f"{r.nines:.1f}", _fmt_p(r.p_loss_cluster), str(r.groups)] for r, b in zip(rows, bounds)]
    widths = [max(len(c[i]) for c in [headers, *cells]) for i in range(len(headers))]
    left = {0, 5}

    def line(cs: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cs, widths))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(c) for c in cells)])


def verdict(rows: list[Outcome], default: Scheme, target: int = 11) -> str:
    """The sentence the issue asks for: the default profile's nines, and who reaches ``target``."""
    mine = next((r for r in rows if (r.k, r.m) == (default.k, default.m)), None)
    reach = [r.scheme for r in rows if r.nines >= target]
    head = (f"the default profile ({default.name} in cluster.toml) reaches "
            f"{math.floor(mine.nines) if mine else '?'} nines")
    return f"{head}; profiles reaching {target} nines: {', '.join(reach) if reach else 'none'}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        schemes = ([parse_scheme(s) for s in args.schemes.split(",") if s.strip()]
                   if args.schemes else list(DEFAULT_SCHEMES))
        for afr in (args.afr, args.domain_afr):
            hourly_rate(afr)
    except ValueError as e:
        print(f"durability: {e}", file=sys.stderr)
        return 2
    if any(s.m == 0 for s in schemes):
        print("durability: a scheme with m=0 has no redundancy to model", file=sys.stderr)
        return 2
    default, default_from = _default_profile(args.config)
    if args.schemes is None and default not in schemes:
        schemes.append(default)
    disk_bytes = args.disk_tb * TB

    measured: dict = {}
    repairs: dict[Scheme, Repair] = {}
    if args.repair_mbps is not None:
        if args.repair_mbps <= 0:
            print("durability: --repair-mbps must be positive", file=sys.stderr)
            return 2
        for s in schemes:
            repairs[s] = Repair(read_bytes_per_s=args.repair_mbps * MB, source="given")
    else:
        data_dir = _data_dir(args.config, args.data_dir)
        fsync = measure_fsync(data_dir)
        measured = {"fsync_write_mbps": fsync / MB, "fsync_dir": str(data_dir),
                    "network_share_mbps": args.network_mbps, "zfec_rebuild_mbps": {}}
        from .rebuild import load_saved
        from .rebuild import measure as measure_reconstructor

        recon = None
        if args.measure_rebuild:
            recon = measure_reconstructor(data_dir=data_dir, total_bytes=48 * MiB, ceilings=False)
        elif not args.no_saved_rebuild:
            recon = load_saved(data_dir)
        if recon is not None:
            measured["reconstructor"] = {k: recon.get(k) for k in (
                "scheme", "rebuild_read_mbps", "rebuild_write_mbps", "measured_at", "fragments_rebuilt")}
        for s in schemes:
            rebuild = measure_rebuild(s, seconds=args.seconds)
            measured["zfec_rebuild_mbps"][s.name] = rebuild / MB
            read = min(rebuild, args.network_mbps * MB)
            which = "zfec" if rebuild < args.network_mbps * MB else "network"
            if recon is not None and recon["rebuild_read_mbps"] * MB < read:
                # The reconstructor's own end-to-end rate (RPC, zfec, fsync'd writes) binds.
                read = recon["rebuild_read_mbps"] * MB
                which = "reconstructor"
            if disk_bytes / fsync > s.k * disk_bytes / read:
                which = "fsync"
            repairs[s] = Repair(read_bytes_per_s=read, write_bytes_per_s=fsync, source=which)

    rows = [evaluate(s, repairs[s], afr=args.afr, disk_bytes=disk_bytes, disks=args.disks,
                     detect_hours=args.detect_hours, domain_afr=args.domain_afr, domains=args.domains)
            for s in schemes]

    out = sys.stdout
    layout = ""
    if args.domain_afr:
        layout = f", {args.domains} domains per group" if args.domains else ", one domain per fragment"
    print("durability model: per placement group CTMC, MTTDL solved exactly (docs/durability.md)", file=out)
    print(f"inputs: disk AFR {args.afr:.2%}, {args.disk_tb:g} TB disks, {args.disks} disks, "
          f"detection {args.detect_hours:g} h, domain AFR {args.domain_afr:.2%}{layout}", file=out)
    if measured:
        zf = ", ".join(f"{k} {v:.0f}" for k, v in measured["zfec_rebuild_mbps"].items())
        print(f"repair bandwidth, measured now on this machine: zfec rebuild (1 MiB stripes, 1 core, "
              f"MB/s of fragments read) {zf}; fsync'd writes {measured['fsync_write_mbps']:.0f} MB/s "
              f"in {measured['fsync_dir']}; network share {args.network_mbps:g} MB/s (--network-mbps)", file=out)
        rc = measured.get("reconstructor")
        if rc:
            age_h = (time.time() - float(rc.get("measured_at") or 0)) / 3600
            print(f"  reconstructor measured on this machine ({rc['scheme']}, `bench rebuild`, {age_h:.1f} h ago): "
                  f"{rc['rebuild_read_mbps']:.0f} MB/s read from survivors, {rc['rebuild_write_mbps']:.0f} MB/s "
                  f"rebuilt; where it is below the ceilings, it is the repair rate (bound \"reconstructor\")",
                  file=out)
        else:
            print("  no reconstructor measurement found (run `python -m headwater.bench rebuild`, or pass "
                  "--measure-rebuild): these are the ceilings a reconstructor could reach", file=out)
        print("  repair time = detection + max(k x disk / min(zfec, network), disk / fsync)", file=out)
    else:
        print(f"repair bandwidth: {args.repair_mbps:g} MB/s read per failed disk (--repair-mbps, "
              f"not measured); repair time = detection + k x disk / that", file=out)
    print(f"default profile from {default_from}: {default.name} (marked *)", file=out)
    print(file=out)
    print(_table(rows, default, [repairs[s].source for s in schemes]), file=out)
    print(file=out)
    print("P(loss)/yr object: one object (one placement group); nines = -log10 of it, the figure "
          "durability claims quote.", file=out)
    print("P(any loss)/yr cluster: some object somewhere, the cluster as disks // n independent "
          "disjoint groups (fewest groups; random placement has more and loses data more often).", file=out)
    print(file=out)
    print(verdict(rows, default), file=out)

    if args.json:
        doc = {"bench": "durability",
               "inputs": {"afr": args.afr, "disk_tb": args.disk_tb, "disks": args.disks,
                          "detect_hours": args.detect_hours, "repair_mbps": args.repair_mbps,
                          "network_mbps": args.network_mbps, "domain_afr": args.domain_afr,
                          "domains": args.domains},
               "measured": measured, "default_profile": default.name,
               "rows": [asdict(r) | {"repair_bound": repairs[s].source} for s, r in zip(schemes, rows)],
               "verdict": verdict(rows, default)}
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
