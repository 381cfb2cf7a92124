"""The object store's registration with the kernel: four roles and two more sections.

Start order: metadata nodes first (the gateway and the repair daemon need the ring), then storage
nodes, then the gateway (``workers`` processes on one port), then the repair daemon.
"""

from __future__ import annotations

from headwater.config import ClusterConfig
from headwater.roles import Role, RoleSet, Section

from . import config, status
from .config import ObjstoreConfig


def _headline(cfg: ClusterConfig) -> str | None:
    store = (cfg.gateway, cfg.repair, *cfg.storage, *cfg.metadata)
    return cfg.objstore.ec.describe() if any(d is not None for d in store) else None


def _endpoints(cfg: ClusterConfig) -> list[str]:
    """The S3 endpoint and the first user's keys, as ``up`` prints them once healthy."""
    g = cfg.gateway
    if g is None:
        return []
    scheme = "https" if g.tls_cert and g.tls_key else "http"
    lines = [f"S3 endpoint   {scheme}://{g.host}:{g.port}  (region {cfg.objstore.region})"]
    if cfg.users:
        u = cfg.users[0]
        lines += [f"access key    {u.access_key}", f"secret key    {u.secret_key}",
                  f"              (user {u.name!r}; change users in the [[users]] tables of {cfg.path})"]
    return lines


def _commands(sub: object, config_help: str) -> None:
    from .commands import add_commands

    add_commands(sub, config_help)


ROLE_SET = RoleSet(
    name="objstore",
    roles=(
        Role(name="metadata", section="metadata", many=True, order=10, rpc=True, read=config.read_metadata,
             entry="headwater.objstore.metadata.node:run_metadata_node", details_text=status.metadata_text),
        Role(name="storage", section="storage", many=True, order=20, rpc=True, read=config.read_storage,
             entry="headwater.objstore.storage.daemon:run_storage_node", details_text=status.storage_text),
        Role(name="gateway", section="gateway", order=30, workers=True, rpc=True, read=config.read_gateway,
             entry="headwater.objstore.gateway.daemon:run_gateway", details_text=status.gateway_text),
        Role(name="repair", section="repair", order=40, rpc=True, read=config.read_repair,
             entry="headwater.objstore.repair.daemon:run_repair", details_text=status.repair_text),
    ),
    sections=(
        Section(name="objstore", read=config.read_objstore, default=ObjstoreConfig),
        Section(name="users", read=config.read_users, default=tuple),
    ),
    check=config.check_objstore,
    headline=_headline,
    endpoints=_endpoints,
    status_report=status.status_report,
    commands=_commands,
)
