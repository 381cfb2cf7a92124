"""The edge's registration with the kernel: the ``edge`` role (every tier: POPs, regional
caches, shields; ``workers`` processes per daemon on one port), the ``[[distributions]]`` and
``[cdn]`` sections, and the ``headwater edge`` subcommands.

The three tiers are one role, so they start together (order 60, after the object store and the
GeoDNS): an edge daemon is healthy without its upstream, which it only needs on a miss, and
marks an unreachable one down and retries it later (:mod:`.tiers`).
"""

from __future__ import annotations

from headwater.config import ClusterConfig
from headwater.roles import Role, RoleSet, Section

from . import cdnkeys, config, status


def _endpoints(cfg: ClusterConfig) -> list[str]:
    out = []
    for e in cfg.edge:
        if e.tier != "pop":
            continue
        line = f"edge {e.id:<8} http://{e.host}:{e.port}/"
        if e.tls_port is not None:
            line += f"  https://{e.host}:{e.tls_port}/"
        out.append(line)
    return out


def _headline(cfg: ClusterConfig) -> str | None:
    edges = cfg.edge
    if not edges:
        return None
    count = {t: sum(e.tier == t for e in edges) for t in config.TIERS}
    return f"CDN {count['pop']} POPs, {count['regional']} regional, {count['shield']} shield"


def _tls_names(cfg: ClusterConfig) -> list[str]:
    """The distributions' hostnames, each with its parent domain and that domain's wildcard
    (``video.cdn.headwater.test`` brings ``cdn.headwater.test`` and ``*.cdn.headwater.test``,
    so a hostname added beside it needs no new certificate); a parent of one label (a TLD) is
    left out, as clients refuse wildcards over one."""
    names: list[str] = []
    for d in cfg.distributions:
        for host in d.hostnames:
            names.append(host)
            if host.startswith("*."):
                names.append(host[2:])
                continue
            parent = host.split(".", 1)[-1]
            if host.count(".") >= 2:
                names += [parent, f"*.{parent}"]
    return names


def _commands(sub: object, config_help: str) -> None:
    from .commands import add_commands

    add_commands(sub, config_help)


ROLE_SET = RoleSet(
    name="edge",
    roles=(
        Role(name="edge", section="edge", many=True, order=60, workers=True, read=config.read_edge,
             entry="headwater.edge.daemon:run_edge", details_text=status.edge_text),
    ),
    sections=(Section(name="distributions", read=config.read_distributions, default=tuple),
              Section(name="cdn", read=config.read_cdn, default=config.CdnConfig)),
    check=config.check_edge,
    headline=_headline,
    endpoints=_endpoints,
    status_report=status.status_report,
    commands=_commands,
    tls_names=_tls_names,
    prepare=cdnkeys.prepare,
)
