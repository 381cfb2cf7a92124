"""monitoring/: the alert rules, their promtool tests, the Grafana dashboards, the metric
inventory, and the scrape config ``headwater monitoring prometheus-config`` makes.

- ``promtool check rules`` accepts every rule file and ``promtool test rules`` passes every test
  file (Debian's ``prometheus`` package, from the Makefile's system-deps);
- every alert has a promtool test in which it fires (a rule nobody saw fire is untested);
- every metric an alert expression or a dashboard query names is in monitoring/metrics.yml,
  with the labels it is matched, grouped or shown by (so a renamed metric or label fails here;
  tests/functional/test_monitoring.py checks the inventory against running daemons);
- each dashboard parses, has a current schema, a unique uid, the datasource/cluster/daemon
  variables, panels on a 24-column grid, and only the metrics of its own role;
- the generated prometheus.yml lists every daemon of the default cluster.toml once, under its
  role's job, and ``promtool check config`` accepts it with the rules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from headwater.config import load
from headwater.monitoring import prometheus_config, targets, to_yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
RULES = sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = sorted((MONITORING / "grafana").glob("*.json"))
INVENTORY = yaml.safe_load((MONITORING / "metrics.yml").read_text())

# Labels Prometheus and the generated scrape config put on every series.
TARGET_LABELS = {"job", "instance", "daemon", "cluster", "worker"}
# Series Prometheus makes itself.
BUILTIN = {"up": set(), "ALERTS": {"alertname", "alertstate", "severity"}, "scrape_duration_seconds": set()}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan"}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make setup` installs Debian's prometheus package"
    return path


def metric_labels() -> dict[str, set[str]]:
    """Every inventory metric (histograms with their _bucket/_sum/_count) -> its label names."""
    out = {name: set(labels) for name, labels in BUILTIN.items()}
    for metrics in INVENTORY.values():
        for name, labels in metrics.items():
            for suffix in ("", "_bucket", "_sum", "_count"):
                out.setdefault(name + suffix, set()).update(labels, {"le"} if suffix == "_bucket" else ())
    return out


def role_metrics(role: str) -> set[str]:
    names = set(BUILTIN) | set(INVENTORY["every_daemon"]) | set(INVENTORY[role])
    return names | {n + s for n in names for s in ("_bucket", "_sum", "_count")}


def parse_promql(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metric names of a PromQL expression, each with the label names its matchers use, and
    the label names of its grouping clauses (by, without, on, ignoring, group_left/right).

    Enough PromQL for our rules and dashboards: strings, durations and numbers are dropped
    first; an identifier followed by ``(`` is a function.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)                       # ranges and subqueries
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    grouping: set[str] = set()
    for m in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        grouping |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    metrics: dict[str, set[str]] = {}
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}", text):
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
        if m.group(1):
            metrics.setdefault(m.group(1), set()).update(labels)
        else:  # {__name__=...}: not used by us
            raise AssertionError(f"a selector without a metric name in {expr!r}")
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", text)  # numbers
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name in KEYWORDS:
            continue
        metrics.setdefault(name, set())
    return metrics, grouping


def check_expr(expr: str, known: dict[str, set[str]], allowed: set[str] | None = None) -> list[str]:
    """What is wrong with ``expr``'s metric and label names (empty: nothing)."""
    metrics, grouping = parse_promql(expr)
    problems = []
    seen_labels = set(TARGET_LABELS)
    for name, labels in metrics.items():
        if name not in known or (allowed is not None and name not in allowed):
            problems.append(f"unknown metric {name}")
            continue
        seen_labels |= known[name]
        bad = labels - known[name] - TARGET_LABELS
        if bad:
            problems.append(f"{name} has no label {sorted(bad)}")
    bad = grouping - seen_labels
    if bad:
        problems.append(f"grouping by {sorted(bad)}, which none of {sorted(metrics)} has")
    return problems


def alert_rules() -> list[tuple[Path, dict]]:
    return [(path, rule) for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


# --- promtool -----------------------------------------------------------------------------------

def test_promtool_checks_every_rule_file():
    assert len(RULES) >= 6
    r = subprocess.run([promtool(), "check", "rules", *map(str, RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_tests_pass():
    r = subprocess.run([promtool(), "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True,
                       timeout=120, cwd=RULE_TESTS[0].parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(RULE_TESTS), r.stdout


def test_every_rule_file_is_tested_and_every_alert_fires_in_a_test():
    tested_files: set[str] = set()
    fired: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        tested_files |= {Path(f).name for f in doc["rule_files"]}
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert {p.name for p in RULES} <= tested_files
    alerts = [rule["alert"] for _, rule in alert_rules()]
    assert len(alerts) == len(set(alerts)), "an alert name used twice"
    assert set(alerts) - fired == set(), "alerts no promtool test sees firing"


def test_every_alert_has_a_severity_and_says_what_to_do():
    for path, rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), (path.name, rule["alert"])
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], (path.name, rule["alert"])


# --- names against the inventory ------------------------------------------------------------------

def test_the_inventory_lists_the_roles_of_the_registry():
    from headwater.roles import registry

    roles = {r.name for r in registry().roles()}
    assert set(INVENTORY) == roles | {"every_daemon"}


def test_the_promql_reader_finds_metrics_labels_and_grouping():
    metrics, grouping = parse_promql(
        'sum by (cluster, daemon) (rate(hw_edge_requests_total{tier="pop",result=~"Hit|Miss"}[10m])) '
        '/ on (daemon) group_left max(up offset 1h) > 0.5e-3 and time() - x_last_pass_end > 6 * 3600')
    assert metrics == {"hw_edge_requests_total": {"tier", "result"}, "up": set(), "x_last_pass_end": set()}
    assert grouping == {"cluster", "daemon"}
    known = metric_labels()
    assert check_expr('rate(hw_edge_requests_total{tiers="pop"}[5m])', known) == \
        ["hw_edge_requests_total has no label ['tiers']"]
    assert check_expr("headwater_repair_degraded_stripe > 0", known) == ["unknown metric headwater_repair_degraded_stripe"]
    assert check_expr("sum by (pop) (hw_licence_refused)", known) == \
        ["grouping by ['pop'], which none of ['hw_licence_refused'] has"]


@pytest.mark.parametrize("path", RULES, ids=lambda p: p.name)
def test_rule_expressions_use_inventory_metrics_and_labels(path):
    known = metric_labels()
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            assert check_expr(rule["expr"], known) == [], (rule.get("alert") or rule.get("record"), rule["expr"])


# --- dashboards -----------------------------------------------------------------------------------

def panels_of(doc: dict) -> list[dict]:
    out = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_a_dashboard_per_role():
    assert {p.stem for p in DASHBOARDS} == set(INVENTORY) - {"every_daemon"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_parses_and_queries_only_its_roles_metrics(path):
    doc = json.loads(path.read_text())
    role = path.stem
    assert doc["uid"] == f"headwater-{role}" and doc["schemaVersion"] >= 39 and doc["title"].startswith("Headwater / ")
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert set(variables) == {"datasource", "cluster", "daemon"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("cluster", "daemon"):
        assert check_expr(variables[name]["query"]["query"].split("(", 1)[1].rsplit(",", 1)[0], metric_labels()) == []
    ids = [p["id"] for p in panels_of(doc)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    known, allowed = metric_labels(), role_metrics(role)
    queries = 0
    for p in panels_of(doc):
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, (p["title"], grid)
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat") and p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            queries += 1
            # the transcoders' dashboard shows the queue the origin reports
            ok = allowed | ({"hw_origin_jobs_oldest_ready_seconds"} if role == "transcoder" else set())
            assert check_expr(t["expr"], known, ok) == [], (p["title"], t["expr"])
            if t["expr"] and "hw_origin_jobs" not in t["expr"] and not t["expr"].startswith("time()"):
                assert f'job="{role}"' in t["expr"], (p["title"], t["expr"])
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                metrics, grouping = parse_promql(t["expr"])
                has = TARGET_LABELS | grouping | {lb for m in metrics for lb in known.get(m, ())}
                assert label in has, (p["title"], label)
    assert queries >= 6


# --- the scrape config ----------------------------------------------------------------------------

def test_prometheus_config_lists_every_daemon_of_the_default_cluster_once(tmp_path):
    cfg = load(str(REPO / "cluster.toml"))
    doc = prometheus_config(cfg, rule_files=[str(p) for p in RULES], scrape_interval_s=5)
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert set(jobs) == {d.role for d in cfg.daemons()}
    seen = [(job, sc["labels"]["daemon"], t) for job, j in jobs.items() for sc in j["static_configs"] for t in sc["targets"]]
    assert sorted(seen) == sorted((d.role, d.id, f"{d.host}:{d.admin_port}") for d in cfg.daemons())
    assert {sc["labels"]["cluster"] for j in jobs.values() for sc in j["static_configs"]} == {cfg.name}
    assert doc["global"]["scrape_interval"] == "5s" and jobs["storage"]["scrape_timeout"] == "5s"
    # what the CLI writes, read back by a YAML parser and by Prometheus's own checker
    text = to_yaml(doc, header="a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n") and yaml.safe_load(text) == doc
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    r = subprocess.run([promtool(), "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(targets(cfg)) == len(cfg.daemons())


def test_the_cli_writes_the_config_with_the_checkouts_rules(tmp_path):
    from headwater.cli import main

    out = tmp_path / "prometheus.yml"
    assert main(["monitoring", "prometheus-config", "-c", str(REPO / "cluster.toml"), "-o", str(out),
                 "--alertmanager", "127.0.0.1:9093"]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["rule_files"] == [str(MONITORING / "prometheus" / "rules" / "*.yml")]
    assert doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
