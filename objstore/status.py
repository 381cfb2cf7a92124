"""The object store's part of ``headwater status``: each role's DETAILS text from its /healthz,
the repair summary, and what losing a zone, rack, host or node costs each erasure scheme."""

from __future__ import annotations

import time
from typing import Any, Mapping

from headwater.config import ClusterConfig
from headwater.roles import StatusReport
from headwater.status import age as _age
from headwater.status import human_bytes as _human_bytes

from .placement import NodeSite, PlacementError, analyse, placement_warnings

__all__ = ["storage_text", "gateway_text", "metadata_text", "repair_text", "raft_text", "scrub_text",
           "failure_domain_report", "status_report"]


def storage_text(details: Mapping[str, Any]) -> str:
    """Free and used space, fragments, quarantine and scrub age."""
    shown: list[str] = []
    for key, label in (("free_bytes", "free"), ("used_bytes", "used"), ("fragments", "fragments")):
        if key in details:
            shown.append(f"{label} {_human_bytes(details[key]) if key.endswith('_bytes') else details[key]}")
    if details.get("quarantined"):
        shown.append(f"quarantined {details['quarantined']}")
    if details.get("quarantine_files"):
        shown.append(f"in quarantine {details['quarantine_files']}")
    if "scrub_last_pass_end" in details:
        shown.append(scrub_text(details))
    return ", ".join(shown)


def gateway_text(details: Mapping[str, Any]) -> str:
    """The EC scheme and the worker count."""
    shown: list[str] = []
    for key in ("ec", "ec_scheme", "scheme"):
        if key in details:
            shown.append(str(details[key]))
            break
    if "workers" in details:
        shown.append(f"workers {details['workers']}")
    return ", ".join(shown)


def metadata_text(details: Mapping[str, Any]) -> str:
    """Entries and the node's Raft groups."""
    shown: list[str] = []
    for key in ("entries", "records", "objects"):
        if key in details:
            shown.append(f"{key} {details[key]}")
            break
    if isinstance(details.get("raft"), dict):
        shown.append(raft_text(details["raft"]))
    return ", ".join(shown)


def raft_text(groups: dict[str, Any]) -> str:
    """A metadata node's Raft groups: how many it leads, the terms, and how far it has applied."""
    if not groups:
        return "raft: no groups"
    states = [g for g in groups.values() if isinstance(g, dict)]
    leading = sum(1 for g in states if g.get("role") == "leader")
    terms = sorted({g.get("term", 0) for g in states})
    text = f"raft: leads {leading} of {len(states)} group{'s' if len(states) != 1 else ''}"
    text += f", term {terms[0]}" if len(terms) == 1 else f", terms {terms[0]}..{terms[-1]}"
    leaderless = sum(1 for g in states if not g.get("leader"))
    if leaderless:
        text += f", {leaderless} without a leader"
    lag = max((g.get("commit", 0) - g.get("applied", 0) for g in states), default=0)
    text += f", applied {sum(g.get('applied', 0) for g in states)}" + (f" ({lag} behind commit)" if lag else "")
    return text


def scrub_text(details: Mapping[str, Any], now: float | None = None) -> str:
    """A storage node's scrub age and progress: ``scrubbed 5m ago``, ``scrubbing 40%``."""
    now = time.time() if now is None else now
    if not details.get("scrub_enabled", True):
        return "scrub off"
    text = f"scrubbed {_age(details.get('scrub_last_pass_end'), now)}"
    progress = details.get("scrub_pass_progress")
    if isinstance(progress, (int, float)) and 0 < progress < 1:
        text += f" (pass {progress:.0%})"
    return text


def repair_text(details: Mapping[str, Any], now: float | None = None) -> str:
    """The repair daemon's degraded objects and stripes, progress and collector figures."""
    now = time.time() if now is None else now
    if "degraded_objects" not in details:
        return ""
    if not details.get("passes"):
        parts = ["first pass " + (f"{details.get('pass_progress', 0):.0%}" if details.get("pass_running") else "pending")]
    else:
        parts = [f"degraded {details['degraded_objects']} objects / {details.get('degraded_stripes', 0)} stripes"]
        if details.get("unreadable_objects"):
            parts.append(f"UNREADABLE {details['unreadable_objects']}")
        parts.append(f"last pass {_age(details.get('last_pass_end'), now)}")
        if details.get("pass_running"):
            parts.append(f"pass {details.get('pass_progress', 0):.0%}")
    parts.append(f"rebuilt {details.get('fragments_rebuilt', 0)} fragments "
                 f"({_human_bytes(details.get('bytes_rebuilt', 0))})")
    out = set(details.get("nodes_out") or ())
    for node, down_s in (details.get("nodes_down") or {}).items():
        parts.append(f"{node} down {down_s:.0f}s" + (" (out: its fragments are rebuilt elsewhere)" if node in out else ""))
    gc = details.get("gc")
    if isinstance(gc, dict):
        parts.append(f"gc removed {gc.get('fragments_deleted', 0)}, {gc.get('candidates', 0)} waiting")
    rb = details.get("rebalance")
    if isinstance(rb, dict):
        text = (f"rebalance moved {rb.get('fragments_moved', 0)} fragments "
                f"({_human_bytes(rb.get('bytes_moved', 0))})")
        if rb.get("pass_running"):
            text += f", pass {rb.get('pass_progress', 0):.0%}"
        elif rb.get("passes"):
            text += f", least-filled node at {rb.get('least_filled', 0):.0%} of its share"
        parts.append(text)
    return ", ".join(parts)


def failure_domain_report(cfg: ClusterConfig) -> tuple[list[str], list[str]]:
    """What losing one zone, rack, host or node costs each erasure scheme in use, and warnings
    for the losses that are unsafe (data unreadable, no parity margin left, or writes stopped)."""
    if not cfg.storage:
        return [], []
    sites = [NodeSite(id=s.id, zone=s.zone, rack=s.rack, host=s.node_host or s.id) for s in cfg.storage]
    schemes = dict.fromkeys((s.k, s.m, s.write_fragments) for s in [cfg.objstore.ec, *cfg.objstore.bucket_ec.values()])
    counts = {level: len({key(s) for s in sites}) for level, key in (
        ("zone", lambda s: s.zone), ("rack", lambda s: (s.zone, s.rack)), ("host", lambda s: (s.zone, s.rack, s.host)))}
    where = ", ".join(f"{n} {level}{'s' if n != 1 else ''}" for level, n in
                      (("host", counts["host"]), ("rack", counts["rack"]), ("zone", counts["zone"])))
    lines: list[str] = []
    warnings: list[str] = []
    for k, m, quorum in schemes:
        lines.append(f"failure domains, EC {k}+{m} (writes need {quorum} fragments) on "
                     f"{len(sites)} storage nodes, {where}:")
        try:
            losses = analyse(sites, k=k, m=m, write_quorum=quorum)
        except PlacementError as e:
            warnings.append(str(e))
            continue
        lines += [f"  {d.cost()}" for d in losses]
        warnings += placement_warnings(losses, k=k, m=m)
    return lines, warnings


def status_report(cfg: ClusterConfig, rows: list[dict[str, Any]]) -> StatusReport:
    """The repair daemon's view of redundancy, then the failure-domain costs and warnings."""
    lines: list[str] = []
    for r in rows:
        d = r["details"]
        if r["role"] == "repair" and r["healthy"] and d.get("passes"):
            state = ("every stripe has its full redundancy" if not d.get("degraded_objects") else
                     f"{d['degraded_objects']} objects ({d.get('degraded_stripes', 0)} stripes) lack redundancy")
            lines.append(f"repair: {state} as of the last pass; {d.get('layouts', 0)} layouts checked")
    domains, warnings = failure_domain_report(cfg)
    if domains:
        lines += ["", *domains]
    return StatusReport(lines=lines, warnings=warnings)
