"""/metrics of a daemon whose workers share one admin port: every worker's series, whichever answers.

Workers of one daemon (the gateway's, the GeoDNS's, an edge node's, the transcoders') listen on
one admin port with SO_REUSEPORT, so the kernel hands each scrape to any one of them. Were each to
answer with its own registry, Prometheus would see a counter jump between the workers' values at
every scrape, and ``rate()`` would count each jump down as a reset. Instead:

- every worker writes its rendered registry to ``<data_dir>/run/metrics/<id>/<worker>.prom``
  every ``interval_s`` (written whole, then renamed: a reader never sees half a file);
- the worker that answers a scrape renders its own registry afresh, reads its siblings' files
  (skipping one not rewritten for ``stale_after_s``: a worker that died; its restart writes it
  again) and serves them together, each series labelled ``worker="N"``, each metric family's
  HELP and TYPE once and its samples together, as the text format requires.

A daemon with one worker serves its registry as it is: no files, no ``worker`` label.
:func:`merge_worker_texts` is the sans-IO part.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from .clock import SYSTEM_CLOCK, Clock
from .metrics import Registry

__all__ = ["WorkerMetrics", "shared_metrics", "merge_worker_texts", "WORKER_LABEL"]

WORKER_LABEL = "worker"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SUFFIXES = ("_bucket", "_sum", "_count")


def _family(sample_name: str, families: Mapping[str, Any]) -> str:
    if sample_name in families:
        return sample_name
    for suffix in _SUFFIXES:  # a histogram's samples belong to the family named without them
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in families:
            return sample_name[: -len(suffix)]
    return sample_name


def merge_worker_texts(texts: Mapping[int, str]) -> str:
    """Several workers' text expositions as one: samples labelled ``worker="N"`` (first among
    the labels), grouped by metric family in the order families first appear, workers in the
    order of ``texts``; HELP and TYPE from the first worker that has them."""
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for worker, text in texts.items():
        label = f'{WORKER_LABEL}="{worker}"'
        current = ""
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = parts[2]
                    lines = heads.setdefault(current, [])
                    samples.setdefault(current, [])
                    if not any(h.split(None, 2)[1] == parts[1] for h in lines):
                        lines.append(line)
                continue
            m = _NAME.match(line)
            if m is None:
                continue
            name, rest = m.group(0), line[m.end():]
            if name == current or (name.startswith(current) and name[len(current):] in _SUFFIXES):
                family = current
            else:  # a sample without its HELP/TYPE before it
                family = _family(name, heads)
                heads.setdefault(family, [])
            if rest.startswith("{}"):
                rest = "{" + label + "}" + rest[2:]
            elif rest.startswith("{"):
                rest = "{" + label + "," + rest[1:]
            else:
                rest = "{" + label + "}" + rest
            samples.setdefault(family, []).append(name + rest)
    out: list[str] = []
    for family, lines in heads.items():
        out.extend(lines)
        out.extend(samples.get(family, ()))
    return "\n".join(out) + "\n" if out else ""


class WorkerMetrics:
    """One worker's registry, shared with its siblings (see the module docstring).

    ``render()`` is what /metrics serves (``serve_admin(registry=...)`` takes it as it takes a
    :class:`~headwater.metrics.Registry`); ``run_forever()`` publishes this worker's series until
    cancelled, then removes its file. With ``workers == 1`` both are the registry's own.
    """

    def __init__(self, registry: Registry, folder: Path, *, worker: int, workers: int, interval_s: float = 1.0,
                 stale_after_s: float | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.registry = registry
        self.folder = Path(folder)
        self.worker = worker
        self.workers = workers
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else max(5.0, 3 * interval_s)
        self.clock = clock

    @property
    def shared(self) -> bool:
        return self.workers > 1

    def path(self, worker: int) -> Path:
        return self.folder / f"{worker}.prom"

    def publish(self) -> None:
        """Write this worker's series for its siblings (whole: a temporary file renamed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{self.worker}.{os.getpid()}.tmp"
        tmp.write_text(self.registry.render())
        os.replace(tmp, self.path(self.worker))

    def sibling_texts(self) -> dict[int, str]:
        """The siblings' published series that are fresh, by worker."""
        out: dict[int, str] = {}
        now = self.clock.time()
        for w in range(self.workers):
            if w == self.worker:
                continue
            try:
                path = self.path(w)
                if now - path.stat().st_mtime > self.stale_after_s:
                    continue
                out[w] = path.read_text()
            except OSError:  # not written yet, or gone
                continue
        return out

    def render(self) -> str:
        own = self.registry.render()
        if not self.shared:
            return own
        texts = {self.worker: own, **self.sibling_texts()}
        return merge_worker_texts(dict(sorted(texts.items())))

    async def run_forever(self) -> None:
        if not self.shared:
            return
        try:
            while True:
                try:
                    self.publish()
                except OSError:
                    pass  # a full or read-only disk: the siblings serve what they have
                await self.clock.sleep(self.interval_s)
        finally:
            try:
                self.path(self.worker).unlink()
            except OSError:
                pass


def shared_metrics(cluster: Any, node: Any, registry: Registry, worker: int) -> WorkerMetrics:
    """``registry`` of worker ``worker`` of ``node`` (``node.workers`` of them), shared under the
    cluster's ``data_dir``. On the system clock whatever the daemon's: freshness is judged
    against the files' modification times."""
    workers = int(getattr(node, "workers", 1) or 1)
    return WorkerMetrics(registry, Path(cluster.data_dir) / "run" / "metrics" / node.id, worker=worker,
                         workers=workers)
