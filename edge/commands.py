"""The edge's own subcommands: ``headwater edge serve`` (one POP in front of any origin, no
cluster.toml, as ``varnishd -b`` does), ``headwater edge check``, and the CDN's operations:
``headwater cdn invalidate DIST PATH... [--tag T]`` (a signed ``POST /_hw/invalidate`` to the
purge home, then a wait until every tier has applied it) and ``headwater cdn sign DIST PATH
--expires 1h`` (a CloudFront signed URL with a ``[[cdn.keys]]`` private key), and ``headwater cdn
keygen [--id ID]`` (makes the key of a ``private_key_file = "auto"`` entry, :mod:`.cdnkeys`).

``headwater edge serve --origin http://127.0.0.1:8080 --listen 127.0.0.1:6081 --cache-dir DIR
--ram 256MiB`` runs one edge POP with no tier above it: misses go straight to the origin.
/healthz and /metrics listen on ``--admin`` (default: the next port); ``--tls-cert``/``--tls-key``
add HTTPS with ALPN on ``--tls-listen``. One worker runs in this process; ``--workers N`` hands N
of them (``edge serve ... --worker i``, sharing the ports and the disk tier) to the kernel's
supervisor, as ``headwater up`` runs a POP's workers. Such workers refuse purges: the purge log
must be one process's. ``--max-upstream-fetches``, ``--max-rest-fetches`` and ``--upstream-wait``
are the ``[[edge]]`` keys that bound a worker's fetches to the origin (:mod:`.upstreamslots`).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import anyio

from headwater.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from headwater.cli import err as _err
from headwater.config import TLS_AUTO, ClusterConfig, ConfigError, GiB, Reader, load, parse_size

from .config import Distribution, EdgeConfig, read_origin, read_upstream_slots
from .upstreamslots import SlotLimits

__all__ = ["add_commands", "serve_config", "cmd_edge_serve", "cmd_cdn_invalidate", "cmd_cdn_sign",
           "cmd_cdn_keygen"]


def add_commands(sub: Any, config_help: str) -> None:
    """``headwater edge serve`` and ``headwater edge check``."""
    p = sub.add_parser("edge", help="the CDN edge: run one POP in front of any origin, or check [[edge]]")
    edge_sub = p.add_subparsers(dest="edge_command", required=True)
    s = edge_sub.add_parser("serve", help="one edge POP in front of ORIGIN, without cluster.toml")
    s.add_argument("--origin", required=True, metavar="URL", help="http(s)://host[:port][/prefix]")
    s.add_argument("--listen", default="127.0.0.1:6081", metavar="HOST:PORT")
    s.add_argument("--admin", default=None, metavar="HOST:PORT", help="/healthz and /metrics (default: port+1)")
    s.add_argument("--cache-dir", default="var/edge-serve", metavar="DIR")
    s.add_argument("--ram", default="256MiB", metavar="SIZE", help="the RAM tier's size")
    s.add_argument("--disk", default="1GiB", metavar="SIZE", help="the disk tier's size")
    s.add_argument("--id", default="edge", help="this POP's name in X-Cache and Via")
    s.add_argument("--runtime", default="asyncio", choices=("asyncio", "trio"))
    s.add_argument("--secret-file", default=None, metavar="FILE",
                   help="the secret signing POST /_hw/invalidate on the admin port (none: purges refused)")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes sharing the ports (SO_REUSEPORT) and the disk tier, restarted if they exit")
    s.add_argument("--tls-cert", default=None, metavar="FILE", help="PEM certificate (chain): HTTPS on --tls-listen")
    s.add_argument("--tls-key", default=None, metavar="FILE", help="the PEM private key of --tls-cert")
    s.add_argument("--tls-listen", default=None, metavar="HOST:PORT",
                   help=f"HTTPS (ALPN h2, http/1.1) with --tls-cert (default: the --listen host, port {DEFAULT_TLS_PORT})")
    # One worker of --workers N, as the supervisor starts it: not for people.
    s.add_argument("--max-upstream-fetches", type=int, default=None, metavar="N",
                   help="per worker, fetches open to the origin at once (default 512); past them a fetch "
                        "waits --upstream-wait, then is answered 503")
    s.add_argument("--max-rest-fetches", type=int, default=None, metavar="N",
                   help="per worker, of those, ranged fetches for viewers that fell behind a shared fetch "
                        "too large to store (default 16); past them such a viewer's answer is cut short")
    s.add_argument("--upstream-wait", type=float, default=None, metavar="SECONDS",
                   help="how long a fetch waits for a slot (default 1)")
    s.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_edge_serve)
    c = edge_sub.add_parser("check", help="validate [[edge]] and [[distributions]]; print the tiers")
    c.add_argument("-c", "--config", metavar="FILE", help=config_help)
    c.set_defaults(func=cmd_edge_check)

    p = sub.add_parser("cdn", help="the CDN's operations: invalidate cached objects, sign URLs")
    cdn_sub = p.add_subparsers(dest="cdn_command", required=True)
    i = cdn_sub.add_parser("invalidate", help="purge PATHs (and tagged objects) of DIST from every POP and tier")
    i.add_argument("distribution", metavar="DIST")
    i.add_argument("paths", nargs="*", metavar="PATH", help="an exact path, or a prefix ending in * ('/titles/1/*')")
    i.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="purge every object whose Surrogate-Key carried TAG (repeatable)")
    i.add_argument("--via", metavar="ID",
                   help="the [[edge]] daemon to send it to (default: the purge home, the shield)")
    i.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="wait this long for every tier to apply it (0: return once it is accepted)")
    i.add_argument("-c", "--config", metavar="FILE", help=config_help)
    i.set_defaults(func=cmd_cdn_invalidate)
    g = cdn_sub.add_parser("sign", help="a signed URL for PATH of DIST (CloudFront's format)")
    g.add_argument("distribution", metavar="DIST")
    g.add_argument("path", metavar="PATH")
    g.add_argument("--expires", required=True, metavar="WHEN", help="a duration (90s, 15m, 1h, 7d) or @EPOCH")
    g.add_argument("--key-id", metavar="ID", help="the [[cdn.keys]] key pair (default: the first with a private key)")
    g.add_argument("--pop", metavar="ID", help="the POP whose port the URL names (default: the first POP)")
    g.add_argument("--https", action="store_true", help="an https:// URL on the POP's tls_port")
    g.add_argument("-c", "--config", metavar="FILE", help=config_help)
    g.set_defaults(func=cmd_cdn_sign)
    k = cdn_sub.add_parser("keygen", help="make the CDN signing key of an [[cdn.keys]] entry with "
                                          'private_key_file = "auto" (or a new one, to rotate)')
    k.add_argument("--id", metavar="ID", dest="key_id",
                   help="the key-pair id (default: every auto entry of cluster.toml); a new id prints "
                        "the [[cdn.keys]] entry to add")
    k.add_argument("-c", "--config", metavar="FILE", help=config_help)
    k.set_defaults(func=cmd_cdn_keygen)


def _host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(flag, f"{value!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


#: ``--tls-listen``'s port when only ``--tls-cert``/``--tls-key`` are given.
DEFAULT_TLS_PORT = 6443
#: Why ``edge serve --workers N`` (N > 1) refuses purges: the purge log is one process's.
NO_PURGES_WITH_WORKERS = ("edge serve with --workers above 1 keeps no purge log (each worker would number its "
                          "own): run --workers 1 to purge, or a cluster whose shield holds the log")


def serve_config(args: argparse.Namespace) -> ClusterConfig:
    """The one-POP cluster ``edge serve`` runs, from its flags (ConfigError names the flag)."""
    host, port = _host_port(args.listen, "--listen")
    admin_host, admin_port = _host_port(args.admin, "--admin") if args.admin else (host, port + 1)
    reader = Reader(None, "")
    try:
        origin = read_origin(reader, {"origin": args.origin}, "origin", "")
    except ConfigError as e:
        raise ConfigError("--origin", str(e).split(": ", 1)[-1]) from None
    if origin is None or origin.kind != "http":
        raise ConfigError("--origin", "edge serve takes an http:// or https:// origin")
    workers = getattr(args, "workers", 1)
    if not 1 <= workers <= 256:
        raise ConfigError("--workers", f"{workers} is outside 1..256")
    if workers > 1 and getattr(args, "secret_file", None):
        raise ConfigError("--secret-file", NO_PURGES_WITH_WORKERS)
    tls_port, cert, key = _tls_flags(args, host)
    cache_dir = Path(args.cache_dir)
    slots = _slot_flags(args)
    node = EdgeConfig(id=args.id, tier="pop", host=host, port=port, admin_port=admin_port, lat=0.0, lon=0.0,
                      ram_bytes=parse_size(args.ram, "--ram"), disk_bytes=parse_size(args.disk, "--disk") or GiB,
                      cache_dir=cache_dir, workers=workers, tls_port=tls_port, tls_cert=cert, tls_key=key,
                      upstream_slots=slots)
    if admin_host != host:
        raise ConfigError("--admin", "the admin port listens on the --listen host")
    if len({port, admin_port, tls_port} - {None}) < 2 + (tls_port is not None):
        raise ConfigError("--tls-listen" if tls_port in (port, admin_port) else "--admin",
                          "the HTTP, admin and HTTPS ports must differ")
    # Without --secret-file, the kernel's default (var/cluster.secret); none there: the admin port
    # refuses every purge, having nothing to check it against.
    secret = Path(args.secret_file).expanduser().absolute() if getattr(args, "secret_file", None) else None
    # Several workers keep the supervisor's logs and state, and their shared metrics, beside the
    # cache (not in ./var, where a cluster's `headwater up` keeps its own).
    data_dir = {"data_dir": cache_dir.absolute() / "serve"} if workers > 1 else {}
    return ClusterConfig(name="edge-serve", edge=(node,), secret_file=secret, **data_dir,
                         distributions=(Distribution(name="default", origin=origin),))


_SLOT_FLAGS = {"max_upstream_fetches": "--max-upstream-fetches", "max_rest_fetches": "--max-rest-fetches",
               "upstream_wait_seconds": "--upstream-wait"}


def _slot_flags(args: argparse.Namespace) -> SlotLimits:
    """``--max-upstream-fetches``, ``--max-rest-fetches``, ``--upstream-wait``: read as their
    ``[[edge]]`` keys are (ConfigError names the flag)."""
    given = {"max_upstream_fetches": getattr(args, "max_upstream_fetches", None),
             "max_rest_fetches": getattr(args, "max_rest_fetches", None),
             "upstream_wait_seconds": getattr(args, "upstream_wait", None)}
    try:
        return read_upstream_slots(Reader(None, ""), {k: v for k, v in given.items() if v is not None}, "")
    except ConfigError as e:
        raise ConfigError(_SLOT_FLAGS.get(e.key.lstrip("."), e.key), str(e).split(": ", 1)[-1]) from None


def _tls_flags(args: argparse.Namespace, host: str) -> tuple[int | None, str | None, str | None]:
    """``--tls-cert``/``--tls-key`` (both, readable; an SSLContext is built from them now, so a
    bad pair is a usage error, not a worker that dies) and ``--tls-listen``'s port."""
    cert, key, listen = (getattr(args, name, None) for name in ("tls_cert", "tls_key", "tls_listen"))
    if cert is None and key is None:
        if listen is not None:
            raise ConfigError("--tls-listen", "needs --tls-cert and --tls-key")
        return None, None, None
    if cert is None or key is None:
        raise ConfigError("--tls-cert" if cert is None else "--tls-key",
                          "--tls-cert and --tls-key go together (a certificate and its key)")
    if TLS_AUTO in (cert, key):
        raise ConfigError("--tls-cert", f'"{TLS_AUTO}" is cluster.toml\'s local CA: edge serve takes PEM files')
    given = {"tls_cert": cert, "tls_key": key}
    try:
        cert, key = Reader(None, "", root=Path.cwd()).tls_files(given, "")
    except ConfigError as e:
        raise ConfigError(f"--{e.key.replace('_', '-')}", str(e).split(": ", 1)[-1]) from None
    from headwater.http.tls import server_ssl_context

    try:
        server_ssl_context(cert, key)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        raise ConfigError("--tls-cert", f"{cert} with {key}: {e}") from None
    if listen is None:
        return DEFAULT_TLS_PORT, cert, key
    tls_host, tls_port = _host_port(listen, "--tls-listen")
    if tls_host != host:
        raise ConfigError("--tls-listen", "HTTPS listens on the --listen host")
    return tls_port, cert, key


def _worker_argv(args: argparse.Namespace, cluster: ClusterConfig) -> Callable[[Any], list[str]]:
    """How the supervisor starts worker ``spec.worker``: this command again, every flag spelled
    out (paths absolute, the admin port resolved) plus ``--worker``."""
    node = cluster.edge[0]
    base = [sys.executable, "-m", "headwater", "edge", "serve", "--origin", args.origin,
            "--listen", f"{node.host}:{node.port}", "--admin", f"{node.host}:{node.admin_port}",
            "--cache-dir", str(Path(node.cache_dir).absolute()), "--ram", str(node.ram_bytes),
            "--disk", str(node.disk_bytes), "--id", node.id, "--runtime", args.runtime,
            "--workers", str(node.workers)]
    if node.tls_port is not None:
        base += ["--tls-cert", str(node.tls_cert), "--tls-key", str(node.tls_key),
                 "--tls-listen", f"{node.host}:{node.tls_port}"]
    return lambda spec: [*base, "--worker", str(spec.worker)]


def cmd_edge_serve(args: argparse.Namespace) -> int:
    """Run one edge POP in the foreground until interrupted: in this process with one worker,
    else under the kernel's supervisor (as ``headwater up`` runs a POP's workers)."""
    from headwater import log
    from headwater.runtime import backend_options

    from .daemon import run_edge

    try:
        cluster = serve_config(args)
    except ConfigError as e:
        _err(str(e).lstrip(": "))
        return EXIT_USAGE
    node = cluster.edge[0]
    worker = getattr(args, "worker", None)
    if worker is not None and not 0 <= worker < node.workers:
        _err(f"--worker: {worker} is outside 0..{node.workers - 1}")
        return EXIT_USAGE
    if node.workers > 1 and worker is None:
        return _supervise(args, cluster)
    log.configure(level="info", daemon=node.id, fields={"worker": worker} if worker is not None else None)
    if worker is None:
        tls = f" and https://{node.host}:{node.tls_port}/" if node.tls_port is not None else ""
        print(f"edge {node.id}: http://{node.host}:{node.port}/{tls} in front of {cluster.distributions[0].origin.url} "
              f"(admin http://{node.host}:{node.admin_port}/healthz)", flush=True)
    run = functools.partial(run_edge, cluster, node, worker=worker or 0,
                            purges_refused=NO_PURGES_WITH_WORKERS if node.workers > 1 else None)
    try:
        anyio.run(_until_signalled, run, backend=args.runtime, backend_options=backend_options(args.runtime))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


async def _until_signalled(run: Callable[..., Any]) -> None:
    """``run`` until SIGINT or SIGTERM (a supervised worker is stopped with SIGTERM), or until the
    supervisor that started it is gone."""
    import os
    import signal

    from headwater.supervisor import SUPERVISOR_PID_ENV

    async def watch_signals(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                scope.cancel()
                return

    async def watch_parent(scope: anyio.CancelScope, pid: int) -> None:
        while os.getppid() == pid:
            await anyio.sleep(1.0)
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals, tg.cancel_scope)
        parent = os.environ.get(SUPERVISOR_PID_ENV, "")
        if parent.isdigit():
            tg.start_soon(watch_parent, tg.cancel_scope, int(parent))
        await tg.start(run)


def _supervise(args: argparse.Namespace, cluster: ClusterConfig) -> int:
    """``--workers N``: the kernel's supervisor starts N workers (``edge serve ... --worker i``),
    waits until each answered /healthz, restarts one that exits, and stops them all on SIGINT or
    SIGTERM."""
    import signal

    from headwater.supervisor import StartupError, Supervisor, check_ports

    node = cluster.edge[0]
    problems = check_ports([node], reuse_port=True)
    if problems:
        _err(problems[0])
        return EXIT_FAILED
    supervisor = Supervisor(cluster, argv=_worker_argv(args, cluster))
    tls = f" and https://{node.host}:{node.tls_port}/" if node.tls_port is not None else ""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await tg.start(supervisor.run)
            print(f"edge {node.id}: http://{node.host}:{node.port}/{tls} in front of "
                  f"{cluster.distributions[0].origin.url}, {node.workers} workers (admin "
                  f"http://{node.host}:{node.admin_port}/healthz; logs in {supervisor.log_dir})", flush=True)

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # noqa: BLE001 - a worker that cannot start is one clear report
        startup = [e for e in _leaves(exc) if isinstance(e, StartupError)]
        if not startup:
            raise
        _err(startup[0].report())
        return EXIT_FAILED
    return EXIT_OK


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def cmd_edge_check(args: argparse.Namespace) -> int:
    """Read cluster.toml as the daemons would; print each tier and distribution."""
    try:
        cfg = load(args.config)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    for e in cfg.edge:
        print(f"{e.id:<12} {e.tier:<9} http://{e.host}:{e.port}/  admin {e.admin_port}  workers {e.workers}")
    for d in cfg.distributions:
        print(f"distribution {d.name}: {', '.join(d.hostnames) or '(any host)'} -> {d.origin.url}"
              + (f" (secondary {d.secondary.url})" if d.secondary else ""))
    return EXIT_OK


def _tier_applied(edges: Any, dist: str, seq: int, epoch: str, deadline: float) -> tuple[list[str], list[str]]:
    """Poll every edge daemon's /healthz until it shows ``seq`` of ``epoch`` applied for ``dist``
    or ``deadline`` passes: (ids that applied it, ids that did not say so)."""
    import httpx

    pending = {e.id: e for e in edges}
    applied: list[str] = []
    unreachable: dict[str, str] = {}
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while True:
            for node_id, e in list(pending.items()):
                try:
                    doc = client.get(f"http://{e.host}:{e.admin_port}/healthz").json()
                except (httpx.HTTPError, ValueError) as exc:
                    unreachable[node_id] = type(exc).__name__
                    continue
                unreachable.pop(node_id, None)
                state = (doc.get("purge") or {}).get(dist) or {}
                if state.get("epoch") == epoch and isinstance(state.get("last_seq"), int) and state["last_seq"] >= seq:
                    applied.append(node_id)
                    del pending[node_id]
            # A daemon that does not answer applies the purge before it serves again (it catches
            # up from the purge home at start), so waiting on it only delays the answer.
            if all(i in unreachable for i in pending) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    return applied, [f"{i} ({unreachable[i]}: it applies the purge before it serves again)" if i in unreachable else i
                     for i in pending]


def cmd_cdn_invalidate(args: argparse.Namespace) -> int:
    """``headwater cdn invalidate DIST PATH... [--tag T]``: purge, then wait for every tier."""
    import httpx

    from headwater.rpc.auth import cluster_secret

    from .adminauth import admin_key
    from .invalidation import FORWARD_WAIT_S, INVALIDATE_PATH, purge_home
    from .purge import InvalidPurge, validate_path

    try:
        cfg = load(args.config)
        if args.distribution not in {d.name for d in cfg.distributions}:
            raise ConfigError("DIST", f"no [[distributions]] entry is named {args.distribution!r} "
                                      f"({', '.join(d.name for d in cfg.distributions) or 'none'})")
        if not args.paths and not args.tag:
            raise ConfigError("PATH", "give at least one path or --tag")
        for path in args.paths:
            try:
                validate_path(path)
            except InvalidPurge as e:
                raise ConfigError("PATH", str(e)) from None
        edges = {e.id: e for e in cfg.edge}
        node = edges.get(args.via) if args.via else purge_home(cfg)
        if node is None:
            raise ConfigError("--via" if args.via else "edge", f"no [[edge]] daemon {args.via!r}" if args.via
                              else "cluster.toml has no [[edge]] daemons")
        key = admin_key(cluster_secret(cfg))
    except ConfigError as e:
        _err(str(e).lstrip(": "))
        return EXIT_USAGE
    body = json.dumps({"distribution": args.distribution, "paths": args.paths, "tags": args.tag}).encode()
    headers = {"authorization": key.authorization("POST", INVALIDATE_PATH, body, now=time.time()),
               "content-type": "application/json"}
    url = f"http://{node.host}:{node.admin_port}{INVALIDATE_PATH}"
    try:
        r = httpx.post(url, content=body, headers=headers, trust_env=False, timeout=FORWARD_WAIT_S + 5)
    except httpx.HTTPError as e:
        _err(f"{node.id} ({url}): {type(e).__name__}: {e}")
        return EXIT_FAILED
    try:
        doc = r.json()
    except ValueError:
        doc = {}
    if r.status_code != 201 or not isinstance(doc.get("seq"), int):
        _err(f"{node.id} refused the invalidation ({r.status_code}): {doc.get('error') or r.text[:300]}")
        return EXIT_FAILED
    what = ", ".join([*args.paths, *(f"tag {t}" for t in args.tag)])
    print(f"invalidation {doc['seq']} of {args.distribution} accepted by {doc.get('at', node.id)}: {what}", flush=True)
    if args.wait <= 0:
        return EXIT_OK
    applied, missing = _tier_applied(cfg.edge, args.distribution, doc["seq"], str(doc.get("epoch")),
                                     time.monotonic() + args.wait)
    if not missing:
        print(f"applied at every tier ({len(applied)} of {len(applied)})")
        return EXIT_OK
    print(f"applied at {len(applied)} of {len(applied) + len(missing)} tiers; not confirmed: {', '.join(missing)}",
          file=sys.stderr)
    # A daemon that is down applies the purge before it serves again; one that answers but has
    # not applied it within --wait is a failure.
    return EXIT_OK if all("(" in m for m in missing) else EXIT_FAILED


def cmd_cdn_sign(args: argparse.Namespace) -> int:
    """``headwater cdn sign DIST PATH --expires 1h``: print a signed URL (canned policy)."""
    from .signedurl import parse_expiry, sign_with_key

    try:
        cfg = load(args.config)
        dist = next((d for d in cfg.distributions if d.name == args.distribution), None)
        if dist is None:
            raise ConfigError("DIST", f"no [[distributions]] entry is named {args.distribution!r}")
        if not args.path.startswith("/"):
            raise ConfigError("PATH", f"{args.path!r} must start with /")
        keys = cfg.cdn.keys
        if args.key_id:
            key = keys.get(args.key_id)
            if key is None:
                raise ConfigError("--key-id", f"no [[cdn.keys]] entry has id {args.key_id!r} "
                                              f"({', '.join(keys.ids()) or 'none configured'})")
        else:
            key = next((k for k in keys.keys if k.private_key_pem is not None or k.missing), None)
            if key is None:
                raise ConfigError("cdn.keys", "no [[cdn.keys]] entry has a private_key_file on this host "
                                              '(private_key_file = "auto" makes one: README, "Signed CDN URLs")')
        pops = [e for e in cfg.edge if e.tier == "pop"]
        pop = next((e for e in pops if e.id == args.pop), None) if args.pop else (pops[0] if pops else None)
        if pop is None:
            raise ConfigError("--pop", f"no POP {args.pop!r}" if args.pop else "cluster.toml has no POP")
        if args.https and pop.tls_port is None:
            raise ConfigError("--https", f"{pop.id} has no tls_port")
        expires = parse_expiry(args.expires, now=time.time())
    except ConfigError as e:
        _err(str(e).lstrip(": "))
        return EXIT_USAGE
    except ValueError as e:
        _err(f"--expires: {e}")
        return EXIT_USAGE
    host = dist.hostnames[0] if dist.hostnames else pop.host
    scheme, port = ("https", pop.tls_port) if args.https else ("http", pop.port)
    try:
        print(sign_with_key(f"{scheme}://{host}:{port}{args.path}", key, expires=expires))
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    return EXIT_OK


def cmd_cdn_keygen(args: argparse.Namespace) -> int:
    """``headwater cdn keygen [--id ID]``: make ``auto`` keys that are missing (what ``headwater
    up`` does on first start); with a new ``--id``, make that key and print its entry."""
    from .cdnkeys import default_key_file, make_key_file
    from .signedurl import KEY_ID_PATTERN

    try:
        cfg = load(args.config)
    except ConfigError as e:
        _err(str(e).lstrip(": "))
        return EXIT_USAGE
    keys = cfg.cdn.keys
    if args.key_id is None:
        autos = [k for k in keys.keys if k.auto_file is not None]
        if not autos:
            _err('no [[cdn.keys]] entry has private_key_file = "auto": give --id to make a new key')
            return EXIT_USAGE
        for k in autos:
            made = make_key_file(k.auto_file)
            print(f"{k.id}: {'created' if made else 'already there:'} {k.auto_file}")
        return EXIT_OK
    if not KEY_ID_PATTERN.fullmatch(args.key_id):
        _err(f"--id: {args.key_id!r} is not a key-pair id (letters, digits, _ -)")
        return EXIT_USAGE
    known = keys.get(args.key_id)
    if known is not None and known.auto_file is None:
        _err(f"[[cdn.keys]] {args.key_id} names its own key files: keygen makes only auto keys")
        return EXIT_USAGE
    file = default_key_file(cfg, args.key_id)
    made = make_key_file(file)
    print(f"{args.key_id}: {'created' if made else 'already there:'} {file}")
    if known is None:
        print(f"add to {cfg.path}, then name it in trusted_keys and [origin.delivery] signing_key_id:\n"
              f'[[cdn.keys]]\nid = "{args.key_id}"\nprivate_key_file = "auto"', flush=True)
    return EXIT_OK
