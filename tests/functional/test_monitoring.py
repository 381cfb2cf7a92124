"""A real Prometheus (Debian's binary, on 127.0.0.1, a free port, a temporary TSDB) watching a
small real cluster (one daemon of every role, tests/functional/monitoring_harness.py), configured
by ``headwater monitoring prometheus-config`` with the repository's alert rules:

- every target is up, one per daemon, under its role's job with its daemon id; the gateway's and
  the GeoDNS's two workers each have their series (a worker label), whichever answers a scrape;
- every rule group loaded and every rule evaluates without error on the real series;
- an alert evaluates end to end: every daemon just started, so HeadwaterDaemonRestarting (a
  start in the last 5 minutes, for 15) is pending for each, which needs every daemon's
  ``process_start_time_seconds`` with the target's labels;
- every daemon serves every metric monitoring/metrics.yml lists for its role, and the series
  Prometheus stored (after a request to each daemon) carry only the labels listed there: a
  renamed metric or label fails here.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import httpx
import pytest
import yaml

from headwater.cli import main
from headwater.config import load
from tests.cluster import free_ports
from tests.functional.monitoring_harness import running_monitored_cluster

REPO = Path(__file__).resolve().parents[2]
RULES = sorted((REPO / "monitoring" / "prometheus" / "rules").glob("*.yml"))
INVENTORY = yaml.safe_load((REPO / "monitoring" / "metrics.yml").read_text())
TARGET_LABELS = {"__name__", "job", "instance", "daemon", "cluster", "worker"}


class Prometheus:
    """``prometheus`` as a subprocess on ``127.0.0.1:port``; ``api(path)`` is its HTTP API's data."""

    def __init__(self, config: Path, folder: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `make setup` installs Debian's prometheus package"
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.1)

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        doc = r.json()
        assert r.status_code == 200 and doc["status"] == "success", doc
        return doc["data"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_for(what: str, check, timeout: float = 30.0) -> Any:
    """``check()`` until it returns something true; its last value in the failure message."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout:.0f}s")
        time.sleep(0.25)


def exercise(cfg) -> None:
    """A request to each daemon that labels its counters (S3, edge, DNS, licence, origin)."""
    s3 = httpx.get(f"http://127.0.0.1:{cfg.gateway.port}/", timeout=5)  # unsigned: 403, counted
    assert s3.status_code == 403
    pop = cfg.daemon("pop-1")
    httpx.get(f"http://127.0.0.1:{pop.port}/titles/1/v1/missing.m4s", timeout=10)
    q = dns.message.make_query("video.cdn.headwater.test.", "A")
    answer = dns.query.udp(q, "127.0.0.1", port=cfg.dns.port, timeout=2)
    assert answer.answer, "the POP is up: the steered name has an answer"
    licence = httpx.post(f"https://127.0.0.1:{cfg.licence.port}/licence", content=b"{}", timeout=5,
                         verify=ssl.create_default_context(cafile=str(cfg.data_dir / "ca" / "ca.pem")))
    assert 400 <= licence.status_code < 500
    origin = httpx.get(f"http://127.0.0.1:{cfg.origin.port}/nowhere", timeout=5)
    assert origin.status_code == 404


def test_prometheus_scrapes_every_daemon_and_evaluates_the_rules(tmp_path):
    with running_monitored_cluster(tmp_path / "cluster") as cluster:
        cfg = load(str(cluster.config_path))
        daemons = {(d.role, d.id) for d in cfg.daemons()}
        exercise(cfg)
        config = tmp_path / "prometheus.yml"
        assert main(["monitoring", "prometheus-config", "-c", str(cluster.config_path), "-o", str(config),
                     "--scrape-interval", "1"]) == 0
        prometheus = Prometheus(config, tmp_path)
        try:
            prometheus.wait_ready()

            def all_up() -> list[dict] | None:
                active = prometheus.api("targets", state="active")["activeTargets"]
                ok = len(active) == len(daemons) and all(t["health"] == "up" for t in active)
                return active if ok else None

            active = wait_for("every target up", all_up)
            assert {(t["labels"]["job"], t["labels"]["daemon"]) for t in active} == daemons
            assert {t["labels"]["cluster"] for t in active} == {cfg.name}
            up = prometheus.api("query", query="up")["result"]
            assert {(s["metric"]["job"], s["metric"]["daemon"], s["value"][1]) for s in up} == \
                {(job, daemon, "1") for job, daemon in daemons}

            # The two-worker daemons: both workers' series, whichever worker answered the scrape.
            workers = prometheus.api("query", query='count by (job) (process_start_time_seconds{worker!=""})')["result"]
            assert {(w["metric"]["job"], w["value"][1]) for w in workers} == {("gateway", "2"), ("dns", "2")}

            # Every rule file's groups loaded; every rule evaluated, none with an error.
            expected = {g["name"] for p in RULES for g in yaml.safe_load(p.read_text())["groups"]}

            def evaluated() -> list[dict] | None:
                groups = prometheus.api("rules")["groups"]
                rules = [r for g in groups for r in g["rules"]]
                done = {g["name"] for g in groups} == expected and all(
                    not r["lastEvaluation"].startswith("0001") for r in rules)
                return groups if done else None

            groups = wait_for("every rule group loaded and evaluated", evaluated)
            failing = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
            assert failing == []

            def restarting() -> set[tuple[str, str]] | None:
                alerts = prometheus.api("alerts")["alerts"]
                seen = {(a["labels"]["job"], a["labels"]["daemon"]) for a in alerts
                        if a["labels"]["alertname"] == "HeadwaterDaemonRestarting" and a["state"] == "pending"}
                return seen if seen == daemons else None

            wait_for("HeadwaterDaemonRestarting pending for every daemon", restarting)
            firing = [a["labels"] for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
            assert firing == []

            # The inventory against the daemons: every metric listed for a role is served by its
            # daemons (a TYPE line, even before its first sample; by one of them at least: only
            # a POP has hw_edge_rejected_total), the process metrics by every daemon...
            served: dict[str, set[str]] = {}
            for d in cfg.daemons():
                text = httpx.get(f"http://127.0.0.1:{d.admin_port}/metrics", timeout=5).text
                types = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
                assert set(INVENTORY["every_daemon"]) - types == set(), d.id
                served.setdefault(d.role, set()).update(types)
            for role, types in served.items():
                assert set(INVENTORY[role]) - types == set(), role
            # ... and every stored series of a listed metric has only the listed labels.
            known = {name: set(labels) for role in INVENTORY.values() for name, labels in role.items()}
            for suffix in ("_bucket", "_sum", "_count"):
                known.update({n + suffix: labels | ({"le"} if suffix == "_bucket" else set())
                              for n, labels in list(known.items())})
            series = prometheus.api("series", **{"match[]": '{cluster="%s"}' % cfg.name})
            # no metric label clashed with a target label (Prometheus would rename it exported_*)
            assert [x for x in series if any(k.startswith("exported_") for k in x)] == []
            labelled = set()
            for s in series:
                name = s["__name__"]
                if name not in known:
                    continue
                extra = set(s) - TARGET_LABELS - known[name]
                assert extra == set(), (name, s)
                labelled.add(name)
            # the requests above made the labelled counters the rules read
            assert {"headwater_s3_requests_total", "hw_edge_requests_total", "headwater_dns_queries_total",
                    "hw_origin_responses_total", "headwater_dns_pop_up", "hw_origin_jobs_oldest_ready_seconds",
                    "hw_licence_refused"} <= labelled
        finally:
            prometheus.stop()
