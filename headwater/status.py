"""What ``headwater status`` and ``up`` show: each daemon's /healthz, asked in parallel, as rows.

The kernel renders the rows; each role's DETAILS column comes from its registration
(:attr:`headwater.roles.Role.details_text`), and a daemon package adds its own lines below the
table (:attr:`headwater.roles.RoleSet.status_report`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import anyio

from .config import ClusterConfig
from .health import Health, health_of
from .roles import RoleUnavailable, registry

if TYPE_CHECKING:
    import httpx

__all__ = ["gather_status", "details_text", "human_bytes", "age", "table", "url_host", "short_error"]


def human_bytes(n: Any) -> str:
    """``1536`` -> ``"1.5 KiB"``; anything not a number is shown as it is."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return str(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def age(ts: Any, now: float | None = None) -> str:
    """How long ago wall-clock time ``ts`` was: ``"5.0m ago"``, ``"never"``."""
    now = time.time() if now is None else now
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts <= 0:
        return "never"
    s = max(0.0, now - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.1f}{unit} ago"
    return f"{s:.0f}s ago"


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def details_text(role: str, details: Mapping[str, Any]) -> str:
    """The DETAILS column: the role's own text, an error, or a few scalar fields."""
    try:
        render = registry().role(role).details_text
    except RoleUnavailable:
        render = None
    shown = [render(details)] if render is not None else []
    shown = [s for s in shown if s]
    if "error" in details:
        shown.append(f"error: {details['error']}")
    if not shown:  # unknown shape: show the scalar fields
        shown = [f"{k}={v}" for k, v in details.items()
                 if k not in ("status", "pid") and isinstance(v, (str, int, float, bool))][:4]
    return ", ".join(shown)


def url_host(host: str) -> str:
    """``host`` as it goes into a URL to reach it from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def short_error(e: BaseException) -> str:
    if isinstance(e, Exception) and "ConnectError" in type(e).__name__:
        return "connection refused"
    if "Timeout" in type(e).__name__:
        return "timed out"
    return f"{type(e).__name__}: {e}".strip().rstrip(":")


async def gather_status(cfg: ClusterConfig, *, timeout_s: float = 1.5) -> list[dict[str, Any]]:
    """Ask every daemon's /healthz; one entry per daemon, in start order: ``health`` is "ok",
    "degraded" (serving, a dependency away) or "down" (:mod:`headwater.health`); ``healthy``
    is whether it is "ok"."""
    import httpx  # here, not at the top: every daemon imports this module, only `status` asks

    from .supervisor import read_state

    state = read_state(cfg) or {}
    known_pids: dict[str, list[int]] = {}
    for child in state.get("children", []):
        if isinstance(child, dict) and isinstance(child.get("pid"), int):
            known_pids.setdefault(child.get("id"), []).append(child["pid"])
    out: list[dict[str, Any]] = []
    with_workers = {r.name for r in registry().roles() if r.workers}

    async def probe(client: httpx.AsyncClient, d: Any, row: dict[str, Any]) -> None:
        url = f"http://{url_host(d.host)}:{d.admin_port}/healthz"
        try:
            r = await client.get(url)
            doc = r.json()
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (httpx.HTTPError, ValueError) as e:
            row["details"] = {"error": short_error(e)}
            return
        health = health_of(r.status_code, doc)
        row["health"] = health.value
        row["healthy"] = health is Health.OK
        if isinstance(doc.get("pid"), int):
            row["pid"] = doc["pid"]
        row["details"] = {k: v for k, v in doc.items() if k != "pid"}

    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
        async with anyio.create_task_group() as tg:
            for d in cfg.daemons():
                pids = known_pids.get(d.id, [])
                row = {"id": d.id, "role": d.role, "pid": pids[0] if pids else None,
                       "address": f"{d.host}:{d.port}", "admin": f"{d.host}:{d.admin_port}",
                       "health": Health.DOWN.value, "healthy": False, "details": {}}
                if d.role in with_workers and len(pids) > 1:
                    row["pids"] = pids
                out.append(row)
                tg.start_soon(probe, client, d, row)
    return out
