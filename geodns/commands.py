"""The GeoDNS's own subcommands: ``headwater dns check`` (config and zone files, without
starting anything). ``explain`` and ``ds`` belong to the steering and DNSSEC parts."""

from __future__ import annotations

import argparse
from typing import Any

from headwater.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from headwater.cli import err as _err
from headwater.config import ConfigError, load

from .errors import ZoneError
from .reload import load_zones

__all__ = ["add_commands", "cmd_dns_check"]


def add_commands(sub: Any, config_help: str) -> None:
    """``headwater dns check``."""
    p = sub.add_parser("dns", help="the GeoDNS: check its config and zone files")
    dns_sub = p.add_subparsers(dest="dns_command", required=True)
    check = dns_sub.add_parser("check", help="validate [dns] and every zone it serves; print each zone's size")
    check.add_argument("-c", "--config", metavar="FILE", help=config_help)
    check.set_defaults(func=cmd_dns_check)


def cmd_dns_check(args: argparse.Namespace) -> int:
    """Read cluster.toml and every zone as the daemon would; exit 0 when all of it is servable."""
    try:
        cfg = load(args.config)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    if cfg.dns is None:
        _err(f"{cfg.path}: has no [dns] table")
        return EXIT_USAGE
    try:
        zones = load_zones(cfg.dns)
    except ZoneError as e:
        _err(str(e))
        return EXIT_FAILED
    for z in zones.zones:
        records = sum(len(rrset) for by_type in z.rrsets.values() for rrset in by_type.values())
        print(f"{z.origin}  {records} records, {len(z.names)} names, {len(z.steered)} steered, "
              f"serial {z.soa.rdata.times[0]}  ({z.source})")
    return EXIT_OK
