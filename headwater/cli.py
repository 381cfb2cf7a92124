"""``headwater``: the operator's command line.

    headwater up [-c cluster.toml]                 every daemon of the cluster, on this machine
    headwater node ID [-c cluster.toml] [--worker N]  one daemon in the foreground (systemd runs this)
    headwater status [-c cluster.toml] [--json]    health of every daemon
    headwater meta status [-c cluster.toml]        each metadata Raft group: leader, voters, placement
    headwater meta rebalance [-c cluster.toml]     move the groups to where cluster.toml places them
                                                   (after adding a [[metadata]] node, or `drain = true`)

Exit codes: 0 success; 1 a daemon failed (to start, or is down for ``status``); 2 a bad config or
command line, with nothing started.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import signal
import sys
from typing import Any, Awaitable, Callable, Sequence

import anyio

from . import __version__
from .config import ClusterConfig, ConfigError, GatewayConfig, load
from .rpc.auth import cluster_secret, ensure_cluster_secret

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _err(message: str) -> None:
    print(f"headwater: {message}", file=sys.stderr, flush=True)


def _load(path: str | None) -> ClusterConfig:
    return load(path)


def _run_async(backend: str, main: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``main`` on the configured anyio backend (asyncio means asyncio on uvloop)."""
    try:
        from .runtime import run  # the kernel's runtime selection, when present
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.runtime":
            raise
        run = None
    if run is not None:
        return run(main, *args, backend=backend)
    options = {"use_uvloop": True} if backend == "asyncio" else {}
    return anyio.run(main, *args, backend=backend, backend_options=options)


async def _cancel_on_signals(scope: anyio.CancelScope, got: list[int]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            got.append(signum)
            scope.cancel()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


# --- node --------------------------------------------------------------------------------------

def cmd_node(args: argparse.Namespace) -> int:
    from . import daemons, log
    from .supervisor import SUPERVISOR_PID_ENV, check_ports, listen_error_text

    try:
        cfg = _load(args.config)
        node_cfg = cfg.daemon(args.id)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    is_gateway = isinstance(node_cfg, GatewayConfig)
    if args.worker is not None and not is_gateway:
        _err(f"{node_cfg.id}: --worker applies to the gateway only ({node_cfg.id} is a {node_cfg.role} node)")
        return EXIT_USAGE
    if is_gateway and args.worker is not None and not 0 <= args.worker < node_cfg.workers:
        _err(f"{node_cfg.id}: --worker {args.worker} is outside 0..{node_cfg.workers - 1} (workers = {node_cfg.workers})")
        return EXIT_USAGE
    try:
        cluster_secret(cfg)  # every role talks RPC: no secret, no start
    except ConfigError as e:
        _err(f"{node_cfg.id}: {e}")
        return EXIT_USAGE
    try:
        entry = daemons.resolve(node_cfg.role)
    except daemons.RoleUnavailable as e:
        _err(f"{node_cfg.id}: {e}")
        return EXIT_FAILED

    # Ports first: a clear one-line error beats a traceback from deep in the server core.
    # Gateway workers share their ports (SO_REUSEPORT), so they check the same way they bind.
    problems = check_ports([node_cfg], reuse_port=is_gateway)
    if problems:
        _err(problems[0])
        return EXIT_FAILED

    log.configure(level=cfg.log_level)
    logger = log.get_logger(node_cfg.id)
    if is_gateway:
        worker = args.worker or 0
        logger = logger.bind(worker=worker)
        entry = functools.partial(entry, worker=worker)
    supervisor_pid = os.environ.get(SUPERVISOR_PID_ENV)

    async def main() -> list[int]:
        got: list[int] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_signals, tg.cancel_scope, got)
            if supervisor_pid and supervisor_pid.isdigit():
                tg.start_soon(_exit_when_orphaned, int(supervisor_pid), tg.cancel_scope, logger)
            await tg.start(functools.partial(entry, cfg, node_cfg))
            logger.info("daemon.started", role=node_cfg.role, pid=os.getpid(),
                        address=f"{node_cfg.host}:{node_cfg.port}",
                        admin=f"{node_cfg.host}:{node_cfg.admin_port}", runtime=cfg.runtime)
        return got

    try:
        got = _run_async(cfg.runtime, main)
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one clear line
        leaves = _leaves(exc)
        first = next((e for e in leaves if not isinstance(e, (KeyboardInterrupt, SystemExit))), None)
        if first is None:
            return EXIT_OK
        if isinstance(first, OSError) and first.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            # The server core does not say which port; the one now taken is the likely culprit.
            taken = check_ports([node_cfg], reuse_port=is_gateway)
            _err(taken[0] if taken else f"{node_cfg.id}: cannot listen: {listen_error_text(first)}")
            return EXIT_FAILED
        logger.exception("daemon.failed", exc=first)
        _err(f"{node_cfg.id}: failed: {type(first).__name__}: {first}")
        return EXIT_FAILED
    if got:
        logger.info("daemon.stopped", signal=signal.Signals(got[0]).name)
    else:
        logger.info("daemon.stopped")
    return EXIT_OK


async def _exit_when_orphaned(supervisor_pid: int, scope: anyio.CancelScope, logger: Any) -> None:
    """Stop when the supervisor that started us is gone (it was SIGKILLed, say)."""
    while True:
        await anyio.sleep(1.0)
        if os.getppid() != supervisor_pid:
            logger.warning("daemon.orphaned", supervisor_pid=supervisor_pid)
            scope.cancel()
            return


# --- up ----------------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from . import daemons
    from .supervisor import StartupError, Supervisor, check_ports

    try:
        cfg = _load(args.config)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    if not cfg.daemons():
        _err(f"{cfg.path}: names no daemons ([gateway], [[storage]], [[metadata]]): nothing to start")
        return EXIT_USAGE
    problems: list[str] = []
    for role in sorted({d.role for d in cfg.daemons()}):
        why = daemons.check(role)
        if why:
            problems.append(why)
    problems += check_ports(cfg.daemons())
    if problems:
        for p in problems:
            _err(p)
        _err("nothing was started")
        return EXIT_FAILED
    try:
        _, created = ensure_cluster_secret(cfg)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE

    supervisor = Supervisor(cfg, start_timeout_s=args.start_timeout, stop_grace_s=args.stop_grace)
    print(f"headwater: starting {len(cfg.daemons())} daemons of {cfg.name} from {cfg.path} "
          f"(logs in {supervisor.log_dir})", flush=True)
    if created is not None:
        print(f"headwater: created the cluster secret {created} (owner-only; every host of the cluster "
              "needs the same file)", flush=True)

    async def main() -> list[int]:
        got: list[int] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_signals, tg.cancel_scope, got)
            await tg.start(supervisor.run)
            print(up_summary(cfg, supervisor), flush=True)
        return got

    try:
        got = anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    except KeyboardInterrupt:
        got = [signal.SIGINT]
    except BaseException as exc:  # noqa: BLE001
        startup = [e for e in _leaves(exc) if isinstance(e, StartupError)]
        if not startup:
            raise
        _err(startup[0].report())
        _err("every daemon that had started was stopped")
        return EXIT_FAILED
    if got:
        print(f"headwater: stopped ({signal.Signals(got[0]).name})", flush=True)
    return EXIT_OK


def up_summary(cfg: ClusterConfig, supervisor: Any) -> str:
    lines = [f"headwater: {cfg.name} is up ({cfg.objstore.ec.describe()})", ""]
    if cfg.gateway is not None:
        g = cfg.gateway
        scheme = "https" if g.tls_cert else "http"
        lines.append(f"  S3 endpoint   {scheme}://{g.host}:{g.port}  (region {cfg.objstore.region})")
        if cfg.users:
            u = cfg.users[0]
            lines.append(f"  access key    {u.access_key}")
            lines.append(f"  secret key    {u.secret_key}")
            lines.append(f"                (user {u.name!r}; change users in the [[users]] tables of {cfg.path})")
        lines.append("")
    pids: dict[str, list[str]] = {}
    for child in supervisor.snapshot():
        pids.setdefault(child["id"], []).append(str(child["pid"]))
    rows = [("ID", "ROLE", "PID", "ADDRESS", "ADMIN")]
    for d in cfg.daemons():
        rows.append((d.id, d.role, ",".join(pids.get(d.id, ["-"])), f"{d.host}:{d.port}",
                     f"{d.host}:{d.admin_port}"))
    lines += ["  " + line for line in _table(rows)]
    lines += ["", f"  logs: {supervisor.log_dir}/<id>.log   state: {supervisor.state_path}",
              "  `headwater status` shows health; Ctrl-C (or SIGTERM) stops the cluster."]
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


# --- status ------------------------------------------------------------------------------------

def _human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return str(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _details_text(role: str, details: dict[str, Any]) -> str:
    """The role-specific columns: free/used space, EC scheme, entries."""
    shown: list[str] = []
    if role == "storage":
        for key, label in (("free_bytes", "free"), ("used_bytes", "used"), ("fragments", "fragments")):
            if key in details:
                shown.append(f"{label} {_human_bytes(details[key]) if key.endswith('_bytes') else details[key]}")
        if details.get("quarantined"):
            shown.append(f"quarantined {details['quarantined']}")
        if "scrub_last_pass_end" in details:
            shown.append(_scrub_text(details))
    elif role == "repair":
        shown.append(_repair_text(details))
    elif role == "gateway":
        for key in ("ec", "ec_scheme", "scheme"):
            if key in details:
                shown.append(str(details[key]))
                break
        if "workers" in details:
            shown.append(f"workers {details['workers']}")
    elif role == "metadata":
        for key in ("entries", "records", "objects"):
            if key in details:
                shown.append(f"{key} {details[key]}")
                break
        if isinstance(details.get("raft"), dict):
            shown.append(_raft_text(details["raft"]))
    if "error" in details:
        shown.append(f"error: {details['error']}")
    if not shown:  # unknown shape: show the scalar fields
        shown = [f"{k}={v}" for k, v in details.items()
                 if k not in ("status", "pid") and isinstance(v, (str, int, float, bool))][:4]
    return ", ".join(shown)


def _raft_text(groups: dict[str, Any]) -> str:
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


def _age(ts: Any, now: float) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts <= 0:
        return "never"
    s = max(0.0, now - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.1f}{unit} ago"
    return f"{s:.0f}s ago"


def _scrub_text(details: dict[str, Any], now: float | None = None) -> str:
    """A storage node's scrub age and progress: ``scrubbed 5m ago``, ``scrubbing 40%``."""
    import time

    now = time.time() if now is None else now
    if not details.get("scrub_enabled", True):
        return "scrub off"
    text = f"scrubbed {_age(details.get('scrub_last_pass_end'), now)}"
    progress = details.get("scrub_pass_progress")
    if isinstance(progress, (int, float)) and 0 < progress < 1:
        text += f" (pass {progress:.0%})"
    return text


def _repair_text(details: dict[str, Any], now: float | None = None) -> str:
    """The repair daemon's degraded objects and stripes, progress and collector figures."""
    import time

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


async def gather_status(cfg: ClusterConfig, *, timeout_s: float = 1.5) -> list[dict[str, Any]]:
    """Ask every daemon's /healthz; one entry per daemon, in start order."""
    import httpx

    from .supervisor import _url_host, read_state

    state = read_state(cfg) or {}
    known_pids: dict[str, list[int]] = {}
    for child in state.get("children", []):
        if isinstance(child, dict) and isinstance(child.get("pid"), int):
            known_pids.setdefault(child.get("id"), []).append(child["pid"])
    out: list[dict[str, Any]] = []

    async def probe(client: httpx.AsyncClient, d: Any, row: dict[str, Any]) -> None:
        url = f"http://{_url_host(d.host)}:{d.admin_port}/healthz"
        try:
            r = await client.get(url)
            doc = r.json()
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (httpx.HTTPError, ValueError) as e:
            row["details"] = {"error": _short_error(e)}
            return
        row["healthy"] = r.status_code == 200 and doc.get("status") == "ok"
        if isinstance(doc.get("pid"), int):
            row["pid"] = doc["pid"]
        row["details"] = {k: v for k, v in doc.items() if k != "pid"}

    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
        async with anyio.create_task_group() as tg:
            for d in cfg.daemons():
                pids = known_pids.get(d.id, [])
                row = {"id": d.id, "role": d.role, "pid": pids[0] if pids else None,
                       "address": f"{d.host}:{d.port}", "admin": f"{d.host}:{d.admin_port}",
                       "healthy": False, "details": {}}
                if isinstance(d, GatewayConfig) and len(pids) > 1:
                    row["pids"] = pids
                out.append(row)
                tg.start_soon(probe, client, d, row)
    return out


def _short_error(e: BaseException) -> str:
    if isinstance(e, Exception) and "ConnectError" in type(e).__name__:
        return "connection refused"
    if "Timeout" in type(e).__name__:
        return "timed out"
    return f"{type(e).__name__}: {e}".strip().rstrip(":")


def failure_domain_report(cfg: ClusterConfig) -> tuple[list[str], list[str]]:
    """What losing one zone, rack, host or node costs each erasure scheme in use, and warnings
    for the losses that are unsafe (data unreadable, no parity margin left, or writes stopped)."""
    from headwater.objstore.placement import NodeSite, PlacementError, analyse, placement_warnings

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


def cmd_status(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args.config)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    rows = anyio.run(functools.partial(gather_status, cfg, timeout_s=args.timeout),
                     backend="asyncio", backend_options={"use_uvloop": True})
    all_ok = all(r["healthy"] for r in rows)
    domains, warnings = failure_domain_report(cfg)
    if args.json:
        print(json.dumps(rows, indent=2))
        # stdout stays the JSON list scripts parse; the placement warnings go beside it
        for w in warnings:
            _err(f"warning: {w}")
        return EXIT_OK if all_ok else EXIT_FAILED
    table = [("ID", "ROLE", "PID", "ADDRESS", "HEALTH", "DETAILS")]
    for r in rows:
        pid = ",".join(map(str, r["pids"])) if r.get("pids") else str(r["pid"]) if r["pid"] is not None else "-"
        table.append((r["id"], r["role"], pid, r["address"],
                      "ok" if r["healthy"] else "down", _details_text(r["role"], r["details"])))
    up = sum(r["healthy"] for r in rows)
    print(f"{cfg.name}: {up}/{len(rows)} daemons healthy; {cfg.objstore.ec.describe()}")
    for line in _table(table):
        print(line)
    for r in rows:
        d = r["details"]
        if r["role"] == "repair" and r["healthy"] and d.get("passes"):
            state = ("every stripe has its full redundancy" if not d.get("degraded_objects") else
                     f"{d['degraded_objects']} objects ({d.get('degraded_stripes', 0)} stripes) lack redundancy")
            print(f"repair: {state} as of the last pass; {d.get('layouts', 0)} layouts checked")
    if domains:
        print()
        for line in domains:
            print(line)
    for w in warnings:
        print(f"warning: {w}")
    return EXIT_OK if all_ok else EXIT_FAILED


def _meta_table(states: list[Any]) -> list[str]:
    from headwater.objstore.metadata.partition import group_name
    rows: list[tuple[str, ...]] = [("GROUP", "LEADER", "VOTERS", "PLACEMENT", "STATE")]
    for st in states:
        state = ("no leader" if st.leader is None else "in place" if st.in_place else "to move")
        if st.strays:
            state += f"; stale copy on {','.join(st.strays)}"
        rows.append((group_name(st.group), st.leader or "-", ",".join(st.voters) or "-",
                     ",".join(st.target), state))
    return _table(rows)


def cmd_meta(args: argparse.Namespace) -> int:
    """``headwater meta status|rebalance``: the metadata ring's Raft groups."""
    from headwater.objstore.metadata.rebalance import RebalanceError, rebalance, survey
    try:
        cfg = _load(args.config)
        cluster_secret(cfg)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    if not cfg.metadata:
        _err(f"{cfg.path}: has no [[metadata]] nodes")
        return EXIT_USAGE
    if args.action == "status":
        states = anyio.run(survey, cfg, backend="asyncio")
        for line in _meta_table(states):
            print(line)
        return EXIT_OK if all(st.leader is not None and st.in_place for st in states) else EXIT_FAILED
    try:
        states = anyio.run(functools.partial(rebalance, cfg, catch_up_s=args.catch_up_timeout,
                                             report=lambda line: print(line, flush=True)), backend="asyncio")
    except RebalanceError as e:
        _err(str(e))
        return EXIT_FAILED
    for line in _meta_table(states):
        print(line)
    moved_away = [m.id for m in cfg.metadata if m.drain and not any(m.id in st.holders for st in states)]
    if moved_away:
        print(f"drained: {', '.join(moved_away)} hold no group; stop them and remove their [[metadata]] entries")
    return EXIT_OK


# --- entry -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headwater", description="Headwater storage and CDN daemons.")
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "cluster.toml to use (default: $HEADWATER_CONFIG, else ./cluster.toml)"

    p = sub.add_parser("up", help="start every daemon of the cluster on this machine (foreground)")
    p.add_argument("-c", "--config", metavar="FILE", help=config_help)
    p.add_argument("--start-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long each daemon has to become healthy (default 30)")
    p.add_argument("--stop-grace", type=float, default=10.0, metavar="SECONDS",
                   help="how long a daemon has to exit after SIGTERM before SIGKILL (default 10)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("node", help="run one daemon in the foreground (what systemd runs)")
    p.add_argument("id", metavar="ID", help="the daemon's id in cluster.toml")
    p.add_argument("-c", "--config", metavar="FILE", help=config_help)
    p.add_argument("--worker", type=int, metavar="N", help="gateway worker number (0..workers-1)")
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("status", help="health of every daemon")
    p.add_argument("-c", "--config", metavar="FILE", help=config_help)
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--timeout", type=float, default=1.5, metavar="SECONDS",
                   help="how long to wait for each /healthz (default 1.5)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("meta", help="the metadata ring's Raft groups: status, or rebalance onto the listed nodes")
    p.add_argument("action", choices=("status", "rebalance"))
    p.add_argument("-c", "--config", metavar="FILE", help=config_help)
    p.add_argument("--catch-up-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="how long a new node has to catch up with a group (default 300)")
    p.set_defaults(func=cmd_meta)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
