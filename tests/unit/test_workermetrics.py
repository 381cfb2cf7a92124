"""headwater/workermetrics.py: whichever worker answers /metrics serves every worker's series.

- merging two workers' real registries: each family's HELP and TYPE once, its samples together
  (histograms' _bucket/_sum/_count included), every sample labelled with its worker;
- two WorkerMetrics on one folder: each serves both, its own fresh and its sibling's as last
  published; a sibling not rewritten for ``stale_after_s`` (it died) is left out; ``run_forever``
  removes its file when cancelled; one worker alone serves its registry unchanged.
"""

from __future__ import annotations

import os
import re

import anyio
import pytest

from headwater.clock import FakeClock
from headwater.metrics import Registry
from headwater.workermetrics import WorkerMetrics, merge_worker_texts

pytestmark = pytest.mark.anyio


def registry(n: int) -> Registry:
    r = Registry()
    requests = r.counter("hw_requests_total", "Requests.", labels=("status",))
    requests.labels("200").inc(10 * n)
    requests.labels("503").inc(n)
    r.gauge("hw_open", "Open.").set(n)
    r.histogram("hw_seconds", "Latency.", buckets=(0.1, 1.0)).observe(0.5 * n)
    return r


def families(text: str) -> list[tuple[str, list[str]]]:
    """(family, its lines) in order; asserts each family's lines are together and typed once."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            out.append((line.split()[2], [line]))
            continue
        name = line.split()[2] if line.startswith("# TYPE ") else re.match(r"[\w:]+", line).group(0)
        family = out[-1][0]
        assert name == family or name[len(family):] in ("_bucket", "_sum", "_count"), (family, line)
        out[-1][1].append(line)
    names = [f for f, _ in out]
    assert len(names) == len(set(names)), names
    return out


def test_merge_labels_every_sample_and_keeps_families_whole():
    merged = merge_worker_texts({0: registry(1).render(), 1: registry(2).render()})
    fams = dict(families(merged))
    assert list(fams) == ["hw_requests_total", "hw_open", "hw_seconds"]
    assert fams["hw_requests_total"] == [
        "# HELP hw_requests_total Requests.", "# TYPE hw_requests_total counter",
        'hw_requests_total{worker="0",status="200"} 10', 'hw_requests_total{worker="0",status="503"} 1',
        'hw_requests_total{worker="1",status="200"} 20', 'hw_requests_total{worker="1",status="503"} 2']
    assert 'hw_open{worker="1"} 2' in fams["hw_open"]
    assert 'hw_seconds_bucket{worker="1",le="1.0"} 1' in fams["hw_seconds"]
    assert 'hw_seconds_count{worker="0"} 1' in fams["hw_seconds"]
    assert sum(1 for line in merged.splitlines() if not line.startswith("#")) == 2 * (2 + 1 + 5)
    assert merge_worker_texts({}) == ""


def test_a_family_only_one_worker_has_is_kept_whole():
    a, b = registry(1), registry(2)
    b.gauge("hw_only_here", "Only on worker 1.").set(7)
    fams = dict(families(merge_worker_texts({0: a.render(), 1: b.render()})))
    assert fams["hw_only_here"][-1] == 'hw_only_here{worker="1"} 7'


async def test_workers_serve_each_other_and_forget_a_dead_one(tmp_path):
    clock = FakeClock(start=1_000_000.0)
    regs = [registry(1), registry(2)]
    workers = [WorkerMetrics(regs[i], tmp_path / "s3", worker=i, workers=2, interval_s=1.0, stale_after_s=5.0,
                             clock=clock) for i in range(2)]
    for w in workers:
        w.publish()
        os.utime(w.path(w.worker), (clock.time(), clock.time()))
    regs[0].get("hw_open").set(40)  # after publishing: worker 0 serves it at once, worker 1 on the next
    for w in workers:
        fams = dict(families(w.render()))
        assert ('hw_open{worker="0"} 40' in fams["hw_open"]) == (w.worker == 0)
        assert 'hw_open{worker="1"} 2' in fams["hw_open"]
    clock.advance(6)  # worker 1 stopped publishing: worker 0 serves only itself
    assert "worker=\"1\"" not in workers[0].render()
    alone = WorkerMetrics(regs[0], tmp_path / "one", worker=0, workers=1)
    assert alone.render() == regs[0].render() and not (tmp_path / "one").exists()


async def test_run_forever_publishes_until_cancelled_then_removes_its_file(tmp_path):
    w = WorkerMetrics(registry(1), tmp_path / "dns-1", worker=1, workers=2, interval_s=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run_forever)
        with anyio.fail_after(5):
            while not w.path(1).exists():
                await anyio.sleep(0.01)
        assert "hw_requests_total" in w.path(1).read_text()
        tg.cancel_scope.cancel()
    assert not w.path(1).exists()
