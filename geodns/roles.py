"""The GeoDNS's registration with the kernel: the ``dns`` role (``workers`` processes on one
UDP and TCP port) and its ``headwater dns`` subcommands."""

from __future__ import annotations

from headwater.config import ClusterConfig
from headwater.roles import Role, RoleSet

from . import config, status


def _endpoints(cfg: ClusterConfig) -> list[str]:
    d = cfg.dns
    if d is None:
        return []
    name = d.zone or "its zones"
    lines = [f"DNS           {d.host}:{d.port} UDP and TCP, zone {name}  "
             f"(dig @{d.host} -p {d.port} {d.steered[0].name + '.' if d.steered and d.zone else ''}{d.zone or ''} A)"]
    if d.dnssec.enabled:
        lines.append(f"DNSSEC        signed online, keys in {d.dnssec.key_dir}  (headwater dns ds: the DS for the parent)")
    return lines


def _commands(sub: object, config_help: str) -> None:
    from .commands import add_commands

    add_commands(sub, config_help)


ROLE_SET = RoleSet(
    name="dns",
    roles=(
        Role(name="dns", section="dns", order=50, workers=True, read=config.read_dns,
             entry="headwater.dns.daemon:run_dns", details_text=status.dns_text),
    ),
    endpoints=_endpoints,
    status_report=status.status_report,
    commands=_commands,
)
