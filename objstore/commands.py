"""The object store's own subcommands: ``headwater meta status|rebalance``."""

from __future__ import annotations

import argparse
import functools
from typing import Any

import anyio

from headwater.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from headwater.cli import err as _err
from headwater.config import ConfigError, load
from headwater.rpc.auth import cluster_secret
from headwater.status import table

from .metadata.partition import group_name

__all__ = ["add_commands", "cmd_meta", "meta_table"]


def add_commands(sub: Any, config_help: str) -> None:
    """``headwater meta``: the metadata ring's Raft groups."""
    p = sub.add_parser("meta", help="the metadata ring's Raft groups: status, or rebalance onto the listed nodes")
    p.add_argument("action", choices=("status", "rebalance"))
    p.add_argument("-c", "--config", metavar="FILE", help=config_help)
    p.add_argument("--catch-up-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="how long a new node has to catch up with a group (default 300)")
    p.set_defaults(func=cmd_meta)


def meta_table(states: list[Any]) -> list[str]:
    rows: list[tuple[str, ...]] = [("GROUP", "LEADER", "VOTERS", "PLACEMENT", "STATE")]
    for st in states:
        state = ("no leader" if st.leader is None else "in place" if st.in_place else "to move")
        if st.strays:
            state += f"; stale copy on {','.join(st.strays)}"
        rows.append((group_name(st.group), st.leader or "-", ",".join(st.voters) or "-",
                     ",".join(st.target), state))
    return table(rows)


def cmd_meta(args: argparse.Namespace) -> int:
    """``headwater meta status|rebalance``: the metadata ring's Raft groups."""
    from .metadata.rebalance import RebalanceError, rebalance, survey

    try:
        cfg = load(args.config)
        cluster_secret(cfg)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    if not cfg.metadata:
        _err(f"{cfg.path}: has no [[metadata]] nodes")
        return EXIT_USAGE
    if args.action == "status":
        states = anyio.run(survey, cfg, backend="asyncio")
        for line in meta_table(states):
            print(line)
        return EXIT_OK if all(st.leader is not None and st.in_place for st in states) else EXIT_FAILED
    try:
        states = anyio.run(functools.partial(rebalance, cfg, catch_up_s=args.catch_up_timeout,
                                             report=lambda line: print(line, flush=True)), backend="asyncio")
    except RebalanceError as e:
        _err(str(e))
        return EXIT_FAILED
    for line in meta_table(states):
        print(line)
    moved_away = [m.id for m in cfg.metadata if m.drain and not any(m.id in st.holders for st in states)]
    if moved_away:
        print(f"drained: {', '.join(moved_away)} hold no group; stop them and remove their [[metadata]] entries")
    return EXIT_OK
