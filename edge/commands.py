"""The edge's own subcommands: ``headwater edge serve`` (one POP in front of any origin, no
cluster.toml, as ``varnishd -b`` does) and ``headwater edge check``.

``headwater edge serve --origin http://127.0.0.1:8080 --listen 127.0.0.1:6081 --cache-dir DIR
--ram 256MiB`` runs one edge worker whose tier is "pop" with no tier above it: misses go
straight to the origin. /healthz and /metrics listen on ``--admin`` (default: the next port).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import anyio

from headwater.cli import EXIT_OK, EXIT_USAGE
from headwater.cli import err as _err
from headwater.config import ClusterConfig, ConfigError, GiB, Reader, load, parse_size

from .config import Distribution, EdgeConfig, read_origin

__all__ = ["add_commands", "serve_config", "cmd_edge_serve"]


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
    s.set_defaults(func=cmd_edge_serve)
    c = edge_sub.add_parser("check", help="validate [[edge]] and [[distributions]]; print the tiers")
    c.add_argument("-c", "--config", metavar="FILE", help=config_help)
    c.set_defaults(func=cmd_edge_check)


def _host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(flag, f"{value!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve_config(args: argparse.Namespace) -> ClusterConfig:
    """The one-POP cluster ``edge serve`` runs, from its flags (ConfigError names the flag)."""
    host, port = _host_port(args.listen, "--listen")
    admin_host, admin_port = _host_port(args.admin, "--admin") if args.admin else (host, port + 1)
    reader = Reader(None, "")
    origin = read_origin(reader, {"origin": args.origin}, "origin", "")
    if origin is None or origin.kind != "http":
        raise ConfigError("--origin", "edge serve takes an http:// or https:// origin")
    node = EdgeConfig(id=args.id, tier="pop", host=host, port=port, admin_port=admin_port, lat=0.0, lon=0.0,
                      ram_bytes=parse_size(args.ram, "--ram"), disk_bytes=parse_size(args.disk, "--disk") or GiB,
                      cache_dir=Path(args.cache_dir))
    if admin_host != host:
        raise ConfigError("--admin", "the admin port listens on the --listen host")
    return ClusterConfig(name="edge-serve", edge=(node,),
                         distributions=(Distribution(name="default", origin=origin),))


def cmd_edge_serve(args: argparse.Namespace) -> int:
    """Run one edge POP in the foreground until interrupted."""
    from headwater import log
    from headwater.runtime import backend_options

    from .daemon import run_edge

    try:
        cluster = serve_config(args)
    except ConfigError as e:
        _err(str(e).lstrip(": "))
        return EXIT_USAGE
    node = cluster.edge[0]
    log.configure(level="info", daemon=node.id)
    print(f"edge {node.id}: http://{node.host}:{node.port}/ in front of {cluster.distributions[0].origin.url} "
          f"(admin http://{node.host}:{node.admin_port}/healthz)", flush=True)
    try:
        anyio.run(functools.partial(run_edge, cluster, node), backend=args.runtime,
                  backend_options=backend_options(args.runtime))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


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
