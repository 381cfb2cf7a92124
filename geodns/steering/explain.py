"""``headwater dns explain IP``: which POPs a client gets and why, from config and a health snapshot.

Pure: ``geodns/commands.py`` reads the config, fetches the running daemon's health view
(:meth:`~headwater.dns.health.tracker.HealthTracker.to_json`, e.g. from its ``/healthz``; None
when no daemon answers, and every POP then counts as up) and prints what :func:`explain_command`
returns.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Mapping

from ..health.tracker import StaticHealthView
from .config import SteeringConfig
from headwater.geo.locate import Locator
from .steer import Steering

__all__ = ["explain", "render_text", "explain_command"]


def explain(config: SteeringConfig, client_ip: str, health: Mapping[str, Any] | None = None, *,
            name: str | None = None, locator: Locator | None = None) -> dict[str, Any]:
    """The decision for ``client_ip`` as a JSON-able dict (see ``Steering.explain``), plus where
    the health came from. Raises ValueError for an address that is not one."""
    ipaddress.ip_address(client_ip)  # a clear ValueError before any file is opened
    view = StaticHealthView.from_json(health) if health is not None else StaticHealthView()
    own = locator is None
    steering = Steering(config, view, locator=locator)
    try:
        report = steering.explain(client_ip, name)
    finally:
        if own:
            steering.locator.close()
    report["health_source"] = "daemon" if health is not None else "none (no daemon answered: every POP counted as up)"
    report["geoip_db"] = str(config.geo.geoip_db)
    return report


def _km(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} km"


def render_text(report: Mapping[str, Any]) -> str:
    """``report`` (from :func:`explain`) as the lines a terminal shows."""
    loc = report["location"]
    if loc["source"] == "none":
        where = "no location (private, reserved or not in the geo database): POPs in config order"
    else:
        place = " ".join(x for x in (loc["place"], loc["country"]) if x)
        where = f"{loc['source']}: {place} ({loc['lat']:.4f}, {loc['lon']:.4f})"
    lines = [f"client {report['client']}: {where}; the decision depends on its /{loc['prefix_len']}",
             f"name {report['name'] or '(none steered)'}: {report['answers_per_query']} POP(s) per answer, "
             f"TTL {report['ttl']} s; health: {report['health_source']}"]
    for qtype, ans in report["answer"].items():
        if ans["addresses"]:
            notes = [f"ECS scope /{ans['scope_prefix']}"]
            if ans["fail_open"]:
                notes.append("FAIL OPEN: no POP is up")
            if ans["all_full"]:
                notes.append("every up POP is full")
            lines.append(f"{qtype:<5} {' '.join(ans['addresses'])}  ({'; '.join(notes)})")
        else:
            lines.append(f"{qtype:<5} (no POP has an address of this family)")
    header = ("POP", "REGION", "DISTANCE", "WEIGHT", "SCORE", "HEALTH", "LOAD", "A", "AAAA")
    rows = [header]
    for p in report["pops"]:
        load = "-" if p["load"] is None else f"{p['load']:.2f}"
        if p["max_load"] is not None:
            load += f"/{p['max_load']:g}"
        rows.append((p["name"], p["region"] or "-", _km(p["distance_km"]), f"{p['weight']:g}",
                     _km(p["score_km"]), p["health"], load, p["decision"]["A"], p["decision"]["AAAA"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def explain_command(config: SteeringConfig, client_ip: str, health: Mapping[str, Any] | None = None, *,
                    as_json: bool = False, name: str | None = None) -> str:
    """What ``headwater dns explain IP [--json]`` prints."""
    report = explain(config, client_ip, health, name=name)
    return json.dumps(report, indent=2) if as_json else render_text(report)
