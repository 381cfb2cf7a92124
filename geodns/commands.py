"""The GeoDNS's own subcommands:

- ``headwater dns check``: the config and every zone file, read as the daemon would, without
  starting anything;
- ``headwater dns ds``: the DS (and DNSKEY) of every signed zone, for the parent zone;
- ``headwater dns explain IP``: which POP(s) a client gets and why, with the running daemon's
  view of the POPs' health (every POP counted as up when no daemon answers).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from headwater.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from headwater.cli import err as _err
from headwater.config import ClusterConfig, ConfigError, load
from headwater.sealed import Sealer, SealedError
from headwater.status import url_host

from .config import DnsConfig
from .errors import ZoneError
from .reload import load_zones

__all__ = ["add_commands", "cmd_dns_check", "cmd_dns_ds", "cmd_dns_explain", "daemon_health"]

#: How long ``explain`` waits for the daemon's /healthz before explaining without it.
HEALTH_TIMEOUT_S = 1.5
#: The most of a /healthz body read (the POPs' health of a large config fits many times over).
MAX_HEALTH_BYTES = 4 * 1024 * 1024


def add_commands(sub: Any, config_help: str) -> None:
    """``headwater dns check | ds | explain``."""
    p = sub.add_parser("dns", help="the GeoDNS: check its config, print the DS, explain a steering decision")
    dns_sub = p.add_subparsers(dest="dns_command", required=True)
    check = dns_sub.add_parser("check", help="validate [dns] and every zone it serves; print each zone's size")
    check.add_argument("-c", "--config", metavar="FILE", help=config_help)
    check.set_defaults(func=cmd_dns_check)
    ds = dns_sub.add_parser("ds", help="print the DS record (and DNSKEY) of every signed zone, for the parent zone; "
                            "creates a zone's key the way the daemon would if it has none yet")
    ds.add_argument("-c", "--config", metavar="FILE", help=config_help)
    ds.add_argument("--zone", metavar="NAME", help="only this zone (default: every zone served)")
    ds.set_defaults(func=cmd_dns_ds)
    explain = dns_sub.add_parser("explain", help="which POP(s) a client address is steered to, and why "
                                 "(location, distance, weight, health as the running DNS sees it)")
    explain.add_argument("ip", help="the client's (or its resolver's, or its ECS subnet's) address")
    explain.add_argument("--name", help="the steered name (default: the first [[dns.steered]])")
    explain.add_argument("--json", action="store_true", help="the whole decision as JSON")
    explain.add_argument("-c", "--config", metavar="FILE", help=config_help)
    explain.set_defaults(func=cmd_dns_explain)


def _load_dns(path: str | None) -> tuple[ClusterConfig, DnsConfig] | int:
    try:
        cfg = load(path)
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    if cfg.dns is None:
        _err(f"{cfg.path}: has no [dns] table")
        return EXIT_USAGE
    return cfg, cfg.dns


def cmd_dns_check(args: argparse.Namespace) -> int:
    """Read cluster.toml and every zone as the daemon would; exit 0 when all of it is servable."""
    loaded = _load_dns(args.config)
    if isinstance(loaded, int):
        return loaded
    _, dns = loaded
    try:
        zones = load_zones(dns)
    except ZoneError as e:
        _err(str(e))
        return EXIT_FAILED
    for z in zones.zones:
        records = sum(len(rrset) for by_type in z.rrsets.values() for rrset in by_type.values())
        print(f"{z.origin}  {records} records, {len(z.names)} names, {len(z.steered)} steered, "
              f"serial {z.soa.rdata.times[0]}  ({z.source})")
    return EXIT_OK


def cmd_dns_ds(args: argparse.Namespace) -> int:
    """Print ``render_ds`` of each zone's key. The key is the one the daemon signs with: loaded
    from ``key_dir``, or created there exactly as the daemon's first start would (same file, same
    cluster secret, exclusive creation), so the DS printed before the first start stays right."""
    from headwater.rpc.auth import ensure_cluster_secret

    from .dnssec import load_or_create_zone_key, render_ds

    loaded = _load_dns(args.config)
    if isinstance(loaded, int):
        return loaded
    cfg, dns = loaded
    if not dns.dnssec.enabled:
        _err(f"{cfg.path}: DNSSEC is off ([dns.dnssec] enabled = false): the zones are served unsigned and "
             "the parent must hold no DS for them. Set enabled = true, then run this again.")
        return EXIT_FAILED
    try:
        zones = load_zones(dns)
    except ZoneError as e:
        _err(str(e))
        return EXIT_FAILED
    chosen = [z for z in zones.zones if args.zone is None or z.origin_text == args.zone.lower().rstrip(".") + "."]
    if not chosen:
        _err(f"{args.zone} is not a zone this DNS serves ({', '.join(z.origin_text for z in zones.zones)})")
        return EXIT_USAGE
    try:
        _, secret_created = ensure_cluster_secret(cfg)  # as `headwater up` would, before the daemon starts
        sealer = Sealer.from_config(cfg)
        for zone in chosen:
            key, created = load_or_create_zone_key(zone.origin, dns.dnssec.key_dir, sealer)
            if created:
                print(f"headwater: created the DNSSEC key of {zone.origin_text} in {dns.dnssec.key_dir} "
                      f"(the daemon signs with it from its next start)", file=sys.stderr)
            sys.stdout.write(render_ds(key, ttl=dns.ttl))
    except ConfigError as e:
        _err(str(e))
        return EXIT_USAGE
    except SealedError as e:
        _err(str(e))
        return EXIT_FAILED
    if secret_created is not None:
        print(f"headwater: created the cluster secret {secret_created} (owner-only; it opens the DNSSEC keys)",
              file=sys.stderr)
    return EXIT_OK


def daemon_health(dns: DnsConfig, *, timeout_s: float = HEALTH_TIMEOUT_S) -> tuple[dict[str, Any] | None, str]:
    """The running daemon's view of the POPs' health (its /healthz ``pops``, what
    :meth:`~headwater.dns.health.tracker.HealthTracker.to_json` gives) and where it came from;
    ``(None, why)`` when no daemon answers with one."""
    import httpx  # here: every headwater command registers these subcommands, few ask a daemon

    url = f"http://{url_host(dns.host)}:{dns.admin_port}/healthz"
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            with client.stream("GET", url) as response:
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_HEALTH_BYTES:
                        return None, f"{url} answered more than {MAX_HEALTH_BYTES} bytes"
    except httpx.HTTPError as e:
        return None, f"no daemon answered at {url} ({type(e).__name__})"
    try:
        doc = json.loads(body)
    except ValueError:
        return None, f"{url} answered HTTP {response.status_code} without JSON"
    pops = doc.get("pops") if isinstance(doc, dict) else None
    if not isinstance(pops, dict) or not isinstance(pops.get("pops"), dict) or not pops["pops"]:
        return None, f"the daemon at {url} reports no POP health (it steers nothing)"
    return pops, url


def cmd_dns_explain(args: argparse.Namespace) -> int:
    """Explain the steering decision for ``args.ip`` with the running daemon's health."""
    from .steering.explain import explain_command

    loaded = _load_dns(args.config)
    if isinstance(loaded, int):
        return loaded
    cfg, dns = loaded
    if dns.steering is None or not dns.steered:
        _err(f"{cfg.path}: [dns] steers no name (no [[dns.steered]] and [[dns.pops]]): nothing to explain")
        return EXIT_USAGE
    if args.name is not None and args.name.lower().rstrip(".") not in {s.name for s in dns.steered}:
        _err(f"{args.name} is not a steered name (steered: {', '.join(s.name for s in dns.steered)})")
        return EXIT_USAGE
    health, source = daemon_health(dns)
    try:
        text = explain_command(dns.steering, args.ip, health, as_json=args.json,
                               name=args.name.lower().rstrip(".") if args.name else None)
    except ValueError as e:
        _err(f"{args.ip}: {e}")
        return EXIT_USAGE
    if health is None:
        # the JSON says so in health_source; a terminal gets the reason on stderr
        print(f"headwater: {source}: every POP is shown as up", file=sys.stderr)
    print(text)
    return EXIT_OK
