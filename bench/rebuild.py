"""`python -m headwater.bench rebuild`: the reconstructor's rebuild rate, beside the disk ceiling.

Starts k+m real storage-node processes on loopback (a throwaway cluster.toml, data under a
temporary folder next to the configured data directory, so the same disk), writes objects
through the gateway's own ``LayoutWriter``, then loses one node's disk (its fragments are
deleted while it stays up, as after a disk swap) and times :class:`Reconstructor` rebuilding
every lost fragment onto it: reading k survivors over RPC, zfec, appending and committing
(fsync'd) on the target, exactly as a repair pass does. The metadata walk is not timed (a
metadata-free inventory of the layouts just written stands in for it).

Printed beside it: fsync'd 1 MiB file writes in the same directory (the disk ceiling a rebuild
target cannot pass) and zfec rebuild on one core (bench/ceilings.py). ``--json`` writes the
figures; the result is also kept in ``<data_dir>/bench/rebuild.json``, where
``bench durability`` finds it and uses the measured repair rate instead of a ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .peers import free_ports

__all__ = ["measure", "main", "saved_result_path", "load_saved"]

MiB = 1024 * 1024
MB = 1e6


def _config_text(root: Path, k: int, m: int, stripe_bytes: int, ports: list[int]) -> str:
    lines = ["[cluster]", 'name = "rebuild-bench"', f"data_dir = {json.dumps(str(root / 'var'))}", "",
             "[objstore]", 'scrub_rate = "0"', "", "[objstore.ec]", f"k = {k}", f"m = {m}",
             f"stripe_size = {stripe_bytes}", ""]
    for i in range(k + m):
        lines += ["[[storage]]", f'id = "storage-{i + 1}"', f"port = {ports[2 * i]}",
                  f"admin_port = {ports[2 * i + 1]}", ""]
    return "\n".join(lines)


def _wait_healthy(ports: list[int], procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    todo = list(ports)
    while todo:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a storage node exited with {p.returncode} while starting")
        still = []
        for port in todo:
            try:
                ok = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                still.append(port)
        todo = still
        if todo and time.monotonic() > deadline:
            raise RuntimeError(f"storage nodes not healthy after {timeout:.0f}s")
        time.sleep(0.1)


async def _run(config_path: Path, total_bytes: int, object_bytes: int, rate: float) -> dict:
    import anyio
    from headwater.objstore.datapath import LayoutWriter, StoragePool
    from headwater.objstore.layouts import LayoutRef
    from headwater.objstore.repair.reconstructor import Reconstructor, plan_rebuild

    from headwater import config as hwconfig

    cfg = hwconfig.load(config_path)
    scheme = cfg.objstore.ec
    chunk = os.urandom(min(object_bytes, 4 * MiB))
    async with StoragePool(cfg) as pool:
        refs = []
        for n in range(max(1, total_bytes // object_bytes)):
            async with LayoutWriter(pool, scheme) as w:
                left = object_bytes
                while left:
                    piece = chunk[:min(left, len(chunk))]
                    await w.write(piece)
                    left -= len(piece)
                lay = await w.finish()
            refs.append(LayoutRef(ns="obj/bench", key=f"o{n}", slot=0, layout=lay,
                                  value={"layouts": [lay.to_value()]}))
        # Lose storage-1's disk: every fragment it holds goes, the node stays up.
        victim = "storage-1"
        lost = 0
        for ref in refs:
            for i, node in enumerate(ref.layout.nodes):
                if node == victim:
                    await pool.client(node).delete(ref.layout.fid(i))
                    lost += 1
        recon = Reconstructor(cfg, meta=None, pool=pool, rate_bytes_s=rate)  # type: ignore[arg-type]
        checks, _up = await recon.check(refs)
        plans = [p for p in (plan_rebuild(c, [], recon.sites) for c in checks) if p is not None]
        t0 = time.perf_counter()
        for plan in plans:
            await recon.rebuild(plan)
        seconds = time.perf_counter() - t0
        st = recon.stats()
        # Verify: everything rebuilt is there again and complete.
        checks, _ = await recon.check(refs)
        still = sum(1 for c in checks if c.degraded)
        await anyio.sleep(0)
    return {"scheme": f"EC {scheme.k}+{scheme.m}", "stripe_bytes": scheme.stripe_bytes,
            "objects": len(refs), "object_bytes": object_bytes, "fragments_lost": lost,
            "fragments_rebuilt": int(st["fragments_rebuilt"]), "still_degraded": still,
            "seconds": seconds, "bytes_rebuilt": st["bytes_rebuilt"], "bytes_read": st["bytes_read"],
            "rebuild_write_mbps": st["bytes_rebuilt"] / seconds / MB if seconds else 0.0,
            "rebuild_read_mbps": st["bytes_read"] / seconds / MB if seconds else 0.0,
            "rate_limit_mbps": rate / MB if rate > 0 else None}


def measure(*, data_dir: Path, k: int = 4, m: int = 2, stripe_bytes: int = 1 * MiB,
            total_bytes: int = 96 * MiB, object_bytes: int = 8 * MiB, rate: float = 0.0,
            ceilings: bool = True, fsync_bytes: int = 64 * MiB) -> dict:
    """Run the rebuild measurement (see the module docstring); returns its figures.

    ``fsync_bytes``: how much the disk-ceiling measurement writes (the disk may be fast only for
    a burst, so a caller comparing against a sustained rebuild passes about what was rebuilt)."""
    import anyio

    from . import ceilings as _ceilings

    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hw-rebuild-", dir=data_dir) as tmp:
        root = Path(tmp)
        ports = free_ports(2 * (k + m))
        config_path = root / "cluster.toml"
        config_path.write_text(_config_text(root, k, m, stripe_bytes, ports))
        procs: list[subprocess.Popen] = []
        log = open(root / "nodes.log", "wb")
        try:
            for i in range(k + m):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "headwater", "node", f"storage-{i + 1}", "-c", str(config_path)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            _wait_healthy(ports[1::2], procs)
            result = anyio.run(_run, config_path, total_bytes, object_bytes, rate,
                               backend="asyncio", backend_options={"use_uvloop": True})
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)
            log.close()
        if ceilings:
            fs = _ceilings.fsync_writes(root, total_bytes=fsync_bytes)
            result["fsync_write_mbps"] = fs.value
            result["fsync_how"] = fs.how
            zf = {c.name: c.value for c in _ceilings.zfec_codec(k=k, m=m, stripe_bytes=stripe_bytes, seconds=0.5)}
            result["zfec_ceilings"] = zf
    result["measured_at"] = time.time()
    result["data_dir"] = str(data_dir)
    return result


def saved_result_path(data_dir: Path) -> Path:
    return data_dir / "bench" / "rebuild.json"


def load_saved(data_dir: Path, max_age_s: float = 30 * 86400) -> dict | None:
    """The last rebuild measurement kept under ``data_dir``, if there is a recent one."""
    try:
        doc = json.loads(saved_result_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or time.time() - float(doc.get("measured_at", 0)) > max_age_s:
        return None
    return doc if doc.get("rebuild_read_mbps") else None


def render(r: dict) -> str:
    lines = [f"rebuild: {r['scheme']}, {r['stripe_bytes'] // 1024} KiB stripes: {r['objects']} objects of "
             f"{r['object_bytes'] / MiB:.0f} MiB, one node's disk lost ({r['fragments_lost']} fragments)",
             f"  rebuilt {r['fragments_rebuilt']} fragments ({r['bytes_rebuilt'] / MB:.1f} MB) in {r['seconds']:.2f} s; "
             f"{r['still_degraded']} layouts still degraded afterwards",
             f"  rebuild rate      {r['rebuild_write_mbps']:8.1f} MB/s written to the new disk "
             f"({r['rebuild_read_mbps']:.1f} MB/s read from survivors)"
             + (f", limited to {r['rate_limit_mbps']:.0f} MB/s" if r.get("rate_limit_mbps") else ", no rate limit")]
    if "fsync_write_mbps" in r:
        lines.append(f"  disk ceiling      {r['fsync_write_mbps']:8.1f} MB/s fsync'd writes ({r['fsync_how']})"
                     f"  -> rebuild at {r['rebuild_write_mbps'] / r['fsync_write_mbps']:.0%} of it")
    for name, v in (r.get("zfec_ceilings") or {}).items():
        lines.append(f"  {name:<17} {v * 1000:8.1f} MB/s (one core)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m headwater.bench rebuild",
                                description="The reconstructor's rebuild rate against the disk ceiling.")
    p.add_argument("-c", "--config", default=None, help="cluster.toml whose data_dir and EC scheme to use")
    p.add_argument("--total-mib", type=int, default=96, help="data written before the disk is lost (MiB)")
    p.add_argument("--object-mib", type=int, default=8, help="object size (MiB)")
    p.add_argument("--rate-mbps", type=float, default=0.0, help="reconstructor rate limit (0: none)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here too")
    return p


def main(argv: list[str] | None = None) -> int:
    from headwater import config as hwconfig

    args = build_parser().parse_args(argv)
    try:
        cfg = hwconfig.load(args.config)
        data_dir, ec = cfg.data_dir, cfg.objstore.ec
    except hwconfig.ConfigError as e:
        print(f"rebuild: {e}", file=sys.stderr)
        return 2
    r = measure(data_dir=data_dir, k=ec.k, m=ec.m, stripe_bytes=ec.stripe_bytes,
                total_bytes=args.total_mib * MiB, object_bytes=args.object_mib * MiB,
                rate=args.rate_mbps * MB)
    print(render(r))
    saved = saved_result_path(data_dir)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(r, indent=2) + "\n")
    print(f"  kept in {saved} for `bench durability`")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["still_degraded"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
