"""The listing scenario of `bench objstore`: S3 "folder" listings, Headwater beside Swift.

What every S3 browser, `aws s3 ls s3://videos/titles/` and rclone do first:
``ListObjectsV2(Prefix="titles/", Delimiter="/")`` over a bucket whose keys sit under many
"folders" (``titles/00000/`` ...), every page followed to the end. Measured for each bucket shape
(keys x prefixes, 10 k and 100 k keys under 500 and 5,000 prefixes by default), the same keys on
both stores, with boto3 (what the issue measured with; one client, so its parsing is in both
figures alike). Keys go in with the lean SigV4 driver (32 clients, 16-byte bodies); a bigger
shape reuses the keys of a smaller one with the same prefixes, so 100 k keys cost 90 k more PUTs.
Swift's keys go in the same way with ``swift_fill="put"``; by default (``"direct"``) its rows are
written straight into its container databases (``swift_container_fill.py``: Swift takes half an
hour for 100,000 PUTs here, and a listing reads the container database alone).

Reported per shape: the full delimiter listing's seconds (best of ``repeats``), its pages, and
the speed ratio Swift-seconds / ours (goal >= 0.5x); and, so the growth can be read, the same
listing's seconds per common prefix. The result is checked: every common prefix exactly once.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .load import HttpDriver, LoadError
from .peers import Endpoint

__all__ = ["Shape", "DEFAULT_SHAPES", "QUICK_SHAPES", "parse_shapes", "shape_keys", "measure_listing",
           "render_listing", "GOAL_SPEED_RATIO"]

GOAL_SPEED_RATIO = 0.5  # ours at least half Swift's speed on the same call (issue 13)
BODY = b"listing-bench-16"


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """A bucket of ``keys`` keys spread evenly under ``prefixes`` common prefixes."""

    keys: int
    prefixes: int

    @property
    def label(self) -> str:
        return f"{_k(self.keys)} keys / {self.prefixes:,} prefixes"


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


DEFAULT_SHAPES = tuple(Shape(keys=k, prefixes=p) for p in (500, 5000) for k in (10_000, 100_000))
QUICK_SHAPES = tuple(Shape(keys=10_000, prefixes=p) for p in (500, 5000))


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """``"10000x500,100000x5000"`` -> shapes; raises ValueError naming the bad item."""
    out = []
    for item in text.split(","):
        try:
            k, p = (int(x) for x in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"listing shape {item!r}: want KEYSxPREFIXES, e.g. 10000x500") from None
        if not 1 <= p <= k:
            raise ValueError(f"listing shape {item!r}: need 1 <= prefixes <= keys")
        out.append(Shape(keys=k, prefixes=p))
    return tuple(out)


def shape_keys(shape: Shape) -> list[str]:
    """``titles/PPPPP/kKKKKKK``: key i under prefix i mod prefixes, so growing the key count keeps
    the keys already written (shape 10 k is a subset of shape 100 k with the same prefixes)."""
    return [f"titles/{i % shape.prefixes:05d}/k{i:07d}" for i in range(shape.keys)]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _boto3_client(ep: Endpoint) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=ep.url, aws_access_key_id=ep.access_key,
                        aws_secret_access_key=ep.secret_key, region_name=ep.region,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                      read_timeout=600, connect_timeout=10))


def list_folders(s3: Any, bucket: str, prefix: str = "titles/") -> tuple[float, int, list[str], int]:
    """Every page of the delimiter listing: (seconds, pages, common prefixes, keys)."""
    t0 = time.perf_counter()
    prefixes: list[str] = []
    keys = pages = 0
    kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
    while True:
        r = s3.list_objects_v2(**kw)
        pages += 1
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        keys += len(r.get("Contents", []))
        if not r.get("IsTruncated"):
            break
        kw["ContinuationToken"] = r["NextContinuationToken"]
    return time.perf_counter() - t0, pages, prefixes, keys


def fill_swift_directly(ep: Endpoint, bucket: str, keys: list[str]) -> int:
    """Write ``keys`` as 16-byte objects' rows into every replica of Swift's container database
    for ``bucket`` (see ``swift_container_fill.py``); returns the replicas written."""
    if ep.data_dir is None:
        raise LoadError("the Swift endpoint names no data directory: cannot fill its containers directly")
    script = Path(__file__).with_name("swift_container_fill.py")
    r = subprocess.run(["/usr/bin/python3", "-I", str(script), str(ep.data_dir), bucket, str(len(BODY)),
                        hashlib.md5(BODY).hexdigest()], input="\n".join(keys) + "\n",
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise LoadError(f"filling Swift's container {bucket} directly failed: {r.stderr.strip()[-500:]}")
    return int(r.stdout.split()[0])


def measure_listing(ep: Endpoint, shapes: tuple[Shape, ...], *, label: str, repeats: int = 3,
                    clients: int = 32, swift_fill: str = "direct") -> dict[str, dict]:
    """Fill one bucket per prefix count, growing it through ``shapes``' key counts, and time the
    delimiter listing at each shape; returns {shape label: result}. ``swift_fill``: how a Swift
    endpoint's keys go in, ``"direct"`` (its container databases) or ``"put"``."""
    direct = ep.name == "swift" and swift_fill == "direct"
    s3 = _boto3_client(ep)
    http = HttpDriver(ep)
    results: dict[str, dict] = {}
    by_prefixes: dict[int, list[Shape]] = {}
    for s in shapes:
        by_prefixes.setdefault(s.prefixes, []).append(s)
    for prefixes, group in by_prefixes.items():
        bucket = f"hwlist-{os.getpid()}-{secrets.token_hex(3)}"
        s3.create_bucket(Bucket=bucket)
        written = 0
        for shape in sorted(group, key=lambda s: s.keys):
            keys = shape_keys(shape)[written:]
            if keys and direct:
                t0 = time.perf_counter()
                replicas = fill_swift_directly(ep, bucket, keys)
                _say(f"  {label}: filled {shape.label}: {len(keys)} rows written into {replicas} container "
                     f"database replicas in {time.perf_counter() - t0:.1f} s (no PUTs)")
            elif keys:
                batch = http.run("put", f"fill {shape.label}", bucket, keys, clients=clients, body=BODY,
                                 object_bytes=len(BODY))
                _say(f"  {label}: filled {shape.label}: {batch.ops} PUTs in {batch.seconds:.1f} s"
                     + (f", {batch.errors} errors ({batch.first_error[:120]})" if batch.errors else ""))
                if batch.errors:
                    raise LoadError(f"{label}: {batch.errors} PUTs failed filling {shape.label}: {batch.first_error}")
            written = shape.keys
            runs = []
            for _ in range(repeats):
                seconds, pages, got, keys_listed = list_folders(s3, bucket)
                runs.append(seconds)
            want = [f"titles/{i:05d}/" for i in range(prefixes)]
            exact = got == want and keys_listed == 0
            best = min(runs)
            results[shape.label] = {"keys": shape.keys, "prefixes": prefixes, "seconds": round(best, 4),
                                    "fill": "direct" if direct else "put",
                                    "runs": [round(r, 4) for r in runs], "pages": pages,
                                    "ms_per_prefix": round(1000 * best / prefixes, 3), "exact": exact}
            _say(f"  {label}: list {shape.label}: {best:.3f} s best of {repeats} "
                 f"({', '.join(f'{r:.3f}' for r in runs)}), {pages} pages"
                 + ("" if exact else f", WRONG: {len(got)} prefixes, {keys_listed} keys"))
        # Swift deletes a bucket only when empty and the keys are many: leave it to the temp dir
        # both stores live in (removed with the run).
    return results


def render_listing(ours: dict[str, dict], swift: dict[str, dict], shapes: tuple[Shape, ...]) -> str:
    """The table: seconds for the full delimiter listing, both stores, speed ratio, goal."""
    from .objstore import render_table

    rows = []
    for s in shapes:
        a, b = ours.get(s.label), swift.get(s.label)
        ratio = b["seconds"] / a["seconds"] if a and b and a["seconds"] > 0 else None
        goal = f">= {GOAL_SPEED_RATIO:g}x Swift's speed"
        if ratio is not None:
            goal += " (met)" if ratio >= GOAL_SPEED_RATIO else " (NOT met)"
        wrong = [n for n, r in (("ours", a), ("swift", b)) if r and not r["exact"]]
        rows.append([f"LIST delimiter, {s.label} (s)",
                     f"{a['seconds']:.3f}" if a else "-", f"{b['seconds']:.3f}" if b else "-",
                     "-" if ratio is None else f"{ratio:.2f}x", goal,
                     f"{a['pages']}" if a else (f"{b['pages']}" if b else "-"),
                     f"{a['ms_per_prefix']:.3f}" if a else "-",
                     f"{b['ms_per_prefix']:.3f}" if b else "-",
                     ("WRONG: " + ", ".join(wrong)) if wrong else "exact"])
    return render_table(["workload", "Headwater", "Swift", "speed vs Swift", "goal", "pages",
                         "ours ms/prefix", "Swift ms/prefix", "result"], rows)
