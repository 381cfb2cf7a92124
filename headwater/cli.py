"""``headwater``: the operator's command line.

    headwater up [-c cluster.toml]                 every daemon of the cluster, on this machine
    headwater node ID [-c cluster.toml] [--worker N]  one daemon in the foreground (systemd runs this)
    headwater status [-c cluster.toml] [--json]    health of every daemon

and each daemon package's own subcommands (``headwater meta status|rebalance`` for the object
store's metadata ring), registered with its roles (:mod:`headwater.roles`).

Exit codes: 0 success; 1 a daemon failed (to start, or for ``status`` is not ok: down or
degraded); 2 a bad config or command line, with nothing started.
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
from .config import ClusterConfig, ConfigError, load
from .roles import add_commands, registry
from .rpc.auth import cluster_secret, ensure_cluster_secret
from .status import details_text, gather_status, table

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def err(message: str) -> None:
    """One line on stderr, prefixed ``headwater:`` as every CLI error is."""
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
    from . import log, roles
    from .supervisor import SUPERVISOR_PID_ENV, check_ports, listen_error_text

    try:
        cfg = _load(args.config)
        node_cfg = cfg.daemon(args.id)
    except ConfigError as e:
        err(str(e))
        return EXIT_USAGE
    try:
        role = roles.registry().role(node_cfg.role)
        has_workers = role.workers
    except roles.RoleUnavailable as e:
        err(f"{node_cfg.id}: {e}")
        return EXIT_FAILED
    if args.worker is not None and not has_workers:
        worker_roles = ", ".join(r.name for r in roles.registry().roles() if r.workers) or "no role"
        err(f"{node_cfg.id}: --worker applies only to roles with workers ({worker_roles}) "
            f"({node_cfg.id} is a {node_cfg.role} node)")
        return EXIT_USAGE
    if has_workers and args.worker is not None and not 0 <= args.worker < node_cfg.workers:
        err(f"{node_cfg.id}: --worker {args.worker} is outside 0..{node_cfg.workers - 1} (workers = {node_cfg.workers})")
        return EXIT_USAGE
    if role.rpc or getattr(node_cfg, "needs_cluster_secret", False):
        try:
            # a role that talks RPC to its peers, or opens sealed secrets: no secret, no start
            cluster_secret(cfg)
        except ConfigError as e:
            err(f"{node_cfg.id}: {e}")
            return EXIT_USAGE
    try:
        entry = roles.resolve(node_cfg.role)
    except roles.RoleUnavailable as e:
        err(f"{node_cfg.id}: {e}")
        return EXIT_FAILED

    # Ports first: a clear one-line error beats a traceback from deep in the server core.
    # Gateway workers share their ports (SO_REUSEPORT), so they check the same way they bind.
    problems = check_ports([node_cfg], reuse_port=has_workers)
    if problems:
        err(problems[0])
        return EXIT_FAILED

    log.configure(level=cfg.log_level, daemon=node_cfg.id,
                  fields={"worker": args.worker or 0} if has_workers else None)
    logger = log.get_logger(node_cfg.id)
    if has_workers:
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
            taken = check_ports([node_cfg], reuse_port=has_workers)
            err(taken[0] if taken else f"{node_cfg.id}: cannot listen: {listen_error_text(first)}")
            return EXIT_FAILED
        logger.exception("daemon.failed", exc=first)
        err(f"{node_cfg.id}: failed: {type(first).__name__}: {first}")
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
    from . import localca, roles
    from .sealed import SealedError
    from .supervisor import StartupError, Supervisor, check_ports

    def read() -> ClusterConfig:
        cfg = _load(args.config)
        if args.roles is not None:
            cfg = cfg.with_roles(r.strip() for r in args.roles.split(",") if r.strip())
        return cfg

    try:
        cfg = read()
    except ConfigError as e:
        err(str(e))
        return EXIT_USAGE
    if not cfg.daemons():
        sections = ", ".join(f"[[{r.section}]]" if r.many else f"[{r.section}]" for r in registry().roles())
        err(f"{cfg.path}: names no daemons ({sections}): nothing to start")
        return EXIT_USAGE
    problems: list[str] = []
    for role in sorted({d.role for d in cfg.daemons()}):
        why = roles.check(role)
        if why:
            problems.append(why)
    problems += check_ports(cfg.daemons())
    if problems:
        for p in problems:
            err(p)
        err("nothing was started")
        return EXIT_FAILED
    created = None
    if any(registry().role(d.role).rpc or getattr(d, "needs_cluster_secret", False) for d in cfg.daemons()):
        try:
            _, created = ensure_cluster_secret(cfg)
        except ConfigError as e:
            err(str(e))
            return EXIT_USAGE

    made: list[str] = []
    try:
        for rs in registry().role_sets:
            if rs.prepare is not None:
                made += rs.prepare(cfg)
        if made:
            cfg = read()  # sections read what was just made (the edge's auto keys)
    except (ConfigError, OSError) as e:
        err(str(e))
        err("nothing was started")
        return EXIT_FAILED

    try:
        # Before any daemon starts, so its workers find the certificate made and agree on it.
        tls = localca.prepare(cfg)
    except (localca.LocalCAError, SealedError, ConfigError) as e:
        err(f"local CA: {e}")
        err("nothing was started")
        return EXIT_FAILED

    supervisor = Supervisor(cfg, start_timeout_s=args.start_timeout, stop_grace_s=args.stop_grace)
    print(f"headwater: starting {len(cfg.daemons())} daemons of {cfg.name} from {cfg.path} "
          f"(logs in {supervisor.log_dir})", flush=True)
    if created is not None:
        print(f"headwater: created the cluster secret {created} (owner-only; every host of the cluster "
              "needs the same file)", flush=True)
    for line in made:
        print(f"headwater: {line}", flush=True)
    if tls is not None and tls[0].created:
        print(f"headwater: created a local CA, {tls[0].cert_path}: trust it to use the HTTPS ports without "
              "warnings (README, \"Trusting the local CA\"; `headwater ca show`)", flush=True)
    if tls is not None and tls[1].issued:
        print(f"headwater: issued {tls[1].cert} for {tls[1].names}", flush=True)

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
        err(startup[0].report())
        err("every daemon that had started was stopped")
        return EXIT_FAILED
    if got:
        print(f"headwater: stopped ({signal.Signals(got[0]).name})", flush=True)
    return EXIT_OK


def headline(cfg: ClusterConfig) -> str:
    """What each daemon package says of the cluster in a few words (``EC 4+2, 1024 KiB stripes``)."""
    said = [rs.headline(cfg) for rs in registry().role_sets if rs.headline is not None]
    return "; ".join(h for h in said if h)


def up_summary(cfg: ClusterConfig, supervisor: Any) -> str:
    from . import localca

    words = headline(cfg)
    lines = [f"headwater: {cfg.name} is up" + (f" ({words})" if words else ""), ""]
    for rs in registry().role_sets:
        endpoints = rs.endpoints(cfg) if rs.endpoints is not None else []
        if endpoints:
            lines += [f"  {line}" for line in endpoints] + [""]
    pids: dict[str, list[str]] = {}
    for child in supervisor.snapshot():
        pids.setdefault(child["id"], []).append(str(child["pid"]))
    rows = [("ID", "ROLE", "PID", "ADDRESS", "ADMIN")]
    for d in cfg.daemons():
        rows.append((d.id, d.role, ",".join(pids.get(d.id, ["-"])), f"{d.host}:{d.port}",
                     f"{d.host}:{d.admin_port}"))
    lines += ["  " + line for line in table(rows)]
    degraded = sorted({c["id"] for c in supervisor.snapshot() if c.get("health_at_start") == "degraded"})
    if degraded:
        # Started (serving what it can), but a dependency it does not start itself is away.
        lines += ["", f"  degraded: {', '.join(degraded)} (serving, a dependency is away: `headwater status` "
                      "shows which; it recovers by itself when the dependency is back)"]
    if localca.uses_local_ca(cfg):
        lines += ["", f"  TLS: certificates from the local CA {localca.ca_folder(cfg) / localca.CA_CERT_FILE} "
                      "(curl --cacert it; `headwater ca show`)"]
    lines += ["", f"  logs: {supervisor.log_dir}/<id>.log   state: {supervisor.state_path}",
              "  `headwater status` shows health; Ctrl-C (or SIGTERM) stops the cluster."]
    return "\n".join(lines)


# --- status ------------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args.config)
    except ConfigError as e:
        err(str(e))
        return EXIT_USAGE
    rows = anyio.run(functools.partial(gather_status, cfg, timeout_s=args.timeout),
                     backend="asyncio", backend_options={"use_uvloop": True})
    all_ok = all(r["healthy"] for r in rows)
    reports = [rs.status_report(cfg, rows) for rs in registry().role_sets if rs.status_report is not None]
    warnings = [w for rep in reports for w in rep.warnings]
    if args.json:
        print(json.dumps(rows, indent=2))
        # stdout stays the JSON list scripts parse; the packages' warnings go beside it
        for w in warnings:
            err(f"warning: {w}")
        return EXIT_OK if all_ok else EXIT_FAILED
    rows_text = [("ID", "ROLE", "PID", "ADDRESS", "HEALTH", "DETAILS")]
    for r in rows:
        pid = ",".join(map(str, r["pids"])) if r.get("pids") else str(r["pid"]) if r["pid"] is not None else "-"
        rows_text.append((r["id"], r["role"], pid, r["address"],
                          r["health"], details_text(r["role"], r["details"])))
    up = sum(r["healthy"] for r in rows)
    degraded = sum(r["health"] == "degraded" for r in rows)
    words = headline(cfg)
    print(f"{cfg.name}: {up}/{len(rows)} daemons healthy" + (f", {degraded} degraded" if degraded else "")
          + (f"; {words}" if words else ""))
    for line in table(rows_text):
        print(line)
    for rep in reports:
        for line in rep.lines:
            print(line)
    for w in warnings:
        print(f"warning: {w}")
    return EXIT_OK if all_ok else EXIT_FAILED


# --- ca ----------------------------------------------------------------------------------------

def cmd_ca(args: argparse.Namespace) -> int:
    """``headwater ca path``: where the local CA's certificate is; ``headwater ca show``: its
    subject, expiry, fingerprints and the leaf's names. Neither needs the cluster secret."""
    from . import localca

    try:
        cfg = _load(args.config)
    except ConfigError as e:
        err(str(e))
        return EXIT_USAGE
    folder = localca.ca_folder(cfg)
    path = folder / localca.CA_CERT_FILE
    try:
        info = localca.read_ca_info(folder)
    except localca.LocalCAError as e:
        err(str(e))
        return EXIT_FAILED
    if args.ca_command == "path":
        print(path)
        if info is None:
            err(f"{path} does not exist yet: `headwater up` makes it when a listener has tls_cert = \"auto\"")
            return EXIT_FAILED
        return EXIT_OK
    if info is None:
        err(f"no local CA yet ({path}): `headwater up` makes it when a listener has tls_cert = \"auto\"")
        return EXIT_FAILED
    print(f"certificate: {info.cert_path}")
    print(f"subject:     {info.subject}")
    print(f"expires:     {info.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"sha256:      {info.sha256}")
    print(f"spki sha256: {info.spki_sha256}   (chromium --ignore-certificate-errors-spki-list=...)")
    leaf = localca.read_leaf_names(folder)
    if leaf is not None:
        names, not_after = leaf
        print(f"leaf:        {folder / localca.LEAF_CERT_FILE} for {names}, expires {not_after:%Y-%m-%d} UTC")
    return EXIT_OK


# --- monitoring --------------------------------------------------------------------------------

def cmd_monitoring(args: argparse.Namespace) -> int:
    """``headwater monitoring prometheus-config``: prometheus.yml scraping every daemon's admin
    endpoint, with the repository's alert rules (see README, "Monitoring")."""
    from pathlib import Path

    from .monitoring import prometheus_config, to_yaml

    try:
        cfg = _load(args.config)
    except ConfigError as e:
        err(str(e))
        return EXIT_USAGE
    if args.rules is not None:
        rules = args.rules
    else:  # the rules kept beside this package (a checkout or an editable install)
        folder = Path(__file__).resolve().parents[1] / "monitoring" / "prometheus" / "rules"
        rules = [str(folder / "*.yml")] if folder.is_dir() else []
    doc = prometheus_config(cfg, rule_files=rules, scrape_interval_s=args.scrape_interval,
                            evaluation_interval_s=args.scrape_interval, alertmanagers=args.alertmanager)
    text = to_yaml(doc, header=f"Prometheus configuration for cluster {cfg.name!r}, made by\n"
                              f"`headwater monitoring prometheus-config` from {cfg.path or 'the config'}.")
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
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
    p.add_argument("--roles", metavar="ROLE,...",
                   help="start only these roles' daemons (e.g. metadata,storage,gateway,repair: the "
                        "object store alone); the others stay down")
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

    p = sub.add_parser("ca", help="the local CA that signs the certificates of tls_cert = \"auto\" listeners")
    ca_sub = p.add_subparsers(dest="ca_command", required=True, metavar="CA_COMMAND")
    for name, text in (("path", "print the CA certificate's path (curl --cacert \"$(headwater ca path)\")"),
                       ("show", "the CA's subject, expiry and fingerprints, and the leaf's names")):
        c = ca_sub.add_parser(name, help=text)
        c.add_argument("-c", "--config", metavar="FILE", help=config_help)
        c.set_defaults(func=cmd_ca)

    p = sub.add_parser("monitoring", help="Prometheus configuration for the cluster")
    mon_sub = p.add_subparsers(dest="monitoring_command", required=True, metavar="MONITORING_COMMAND")
    c = mon_sub.add_parser("prometheus-config", help="print prometheus.yml: every daemon's /metrics, the alert rules")
    c.add_argument("-c", "--config", metavar="FILE", help=config_help)
    c.add_argument("-o", "--output", metavar="FILE", help="write it here instead of stdout")
    c.add_argument("--rules", action="append", metavar="GLOB",
                   help="a rule file or glob (repeatable; default: this checkout's monitoring/prometheus/rules/*.yml)")
    c.add_argument("--scrape-interval", type=float, default=15.0, metavar="SECONDS",
                   help="scrape and rule evaluation interval (default 15)")
    c.add_argument("--alertmanager", action="append", default=[], metavar="HOST:PORT",
                   help="an Alertmanager to send alerts to (repeatable)")
    c.set_defaults(func=cmd_monitoring)

    add_commands(sub, config_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
