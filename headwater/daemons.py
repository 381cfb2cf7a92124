"""Which code runs each role: role name -> ``module:function``, imported only when a node starts.

Every entry point has the shape::

    async def run_x(cluster: ClusterConfig, node_cfg, *, task_status=anyio.TASK_STATUS_IGNORED)

(the gateway's also takes ``worker: int``). It serves the daemon and its admin endpoint, calls
``task_status.started()`` once both listen, and runs until cancelled.

``HEADWATER_ENTRY_POINTS`` replaces entries for one process tree, as
``"storage=pkg.mod:func,gateway=pkg.other:func"``: the functional tests use it to run the real
CLI and supervisor over stand-in daemons, and an operator may use it to try another build of one
role. An entry named there must exist; nothing else reads the variable.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any, Callable, Mapping

__all__ = ["ROLES", "ENV_OVERRIDE", "RoleUnavailable", "entry_points", "entry_point", "resolve", "check"]

ROLES: Mapping[str, str] = {
    "metadata": "headwater.objstore.metadata.node:run_metadata_node",
    "storage": "headwater.objstore.storage.daemon:run_storage_node",
    "gateway": "headwater.objstore.gateway.daemon:run_gateway",
    "repair": "headwater.objstore.repair.daemon:run_repair",
}

ENV_OVERRIDE = "HEADWATER_ENTRY_POINTS"


class RoleUnavailable(Exception):
    """A role whose entry point cannot be imported (unknown role, missing module or function)."""

    def __init__(self, role: str, target: str | None, reason: str) -> None:
        self.role = role
        self.target = target
        super().__init__(f"role {role!r} is not available ({target or 'no entry point'}): {reason}")


def _overrides(env: Mapping[str, str]) -> dict[str, str]:
    raw = env.get(ENV_OVERRIDE, "").strip()
    out: dict[str, str] = {}
    if not raw:
        return out
    for item in raw.split(","):
        role, sep, target = item.strip().partition("=")
        if not sep or ":" not in target:
            raise RoleUnavailable(role or "?", None,
                                  f"{ENV_OVERRIDE} entries look like role=module:function, got {item!r}")
        out[role.strip()] = target.strip()
    return out


def entry_points(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Role -> ``module:function``, with ``HEADWATER_ENTRY_POINTS`` applied."""
    return {**ROLES, **_overrides(os.environ if env is None else env)}


def entry_point(role: str, env: Mapping[str, str] | None = None) -> str:
    table = entry_points(env)
    if role not in table:
        raise RoleUnavailable(role, None, f"unknown role (known: {', '.join(sorted(table))})")
    return table[role]


def resolve(role: str, env: Mapping[str, str] | None = None) -> Callable[..., Any]:
    """Import and return the entry point for ``role``; raises RoleUnavailable with the reason."""
    target = entry_point(role, env)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RoleUnavailable(role, target, f"cannot import {module_name}: {e}") from e
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise RoleUnavailable(role, target, f"{module_name} has no {attr}") from None
    if not callable(fn):
        raise RoleUnavailable(role, target, f"{target} is not callable")
    return fn


def check(role: str, env: Mapping[str, str] | None = None) -> str | None:
    """Why ``role`` cannot run here, without importing it (``up`` asks before starting anything)."""
    try:
        target = entry_point(role, env)
    except RoleUnavailable as e:
        return str(e)
    module_name = target.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError) as e:
        found = False
        reason = str(e)
    else:
        reason = f"no module named {module_name}"
    return None if found else str(RoleUnavailable(role, target, reason))
