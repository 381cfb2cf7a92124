"""The DRM package's registration with the kernel: the ``licence`` role (the ClearKey licence
server and its key store, one daemon from ``[licence]``) and the ``headwater keys`` and
``headwater entitle`` subcommands.

It starts after the edge (order 70): players reach it only once they have a manifest, and it
needs nothing else of the cluster but its secret (TLS "auto", sealed token secrets).
"""

from __future__ import annotations

from headwater.config import ClusterConfig
from headwater.roles import Role, RoleSet

from . import config, status


def _endpoints(cfg: ClusterConfig) -> list[str]:
    node = cfg.licence
    if node is None:
        return []
    scheme = "https" if node.tls_cert else "http"
    rpc = f"; titles' keys for transcoders: RPC on {node.host}:{node.rpc_port}" if node.rpc_port else ""
    return [f"licence {node.id:<6} {scheme}://{node.host}:{node.port}/licence  (tokens: headwater entitle{rpc})"]


def _commands(sub: object, config_help: str) -> None:
    from .commands import add_commands

    add_commands(sub, config_help)


ROLE_SET = RoleSet(
    name="drm",
    roles=(
        Role(name="licence", section="licence", order=70, read=config.read_licence,
             entry="headwater.drm.licence.daemon:run_licence", details_text=status.licence_text),
    ),
    endpoints=_endpoints,
    commands=_commands,
)
