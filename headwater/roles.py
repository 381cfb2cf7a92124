"""The role registry: which daemons exist and everything the kernel needs to know about each.

A daemon package declares its roles in one :class:`RoleSet` (for the object store,
``headwater.objstore.roles.ROLE_SET``): each :class:`Role`'s cluster.toml section and how to read
it, its entry point, its place in the start order, whether it runs ``workers`` processes on one
port, and its text in ``headwater status``; beside them the package's other sections
(``[objstore]``, ``[[users]]``), its checks across sections, its lines in ``up`` and ``status``,
and its own CLI subcommands (``headwater meta …``). The kernel imports no daemon package: it
finds them by name in :data:`PACKAGES`, so adding a daemon is a new package plus one line there.

Every entry point has the shape::

    async def run_x(cluster: ClusterConfig, node_cfg, *, task_status=anyio.TASK_STATUS_IGNORED)

(a role with ``workers=True`` also takes ``worker: int``). It serves the daemon and its admin
endpoint, calls ``task_status.started()`` once both listen, and runs until cancelled.

Two environment variables change the registry for one process tree (the supervisor's children
inherit them): ``HEADWATER_ROLE_PACKAGES`` adds packages (``"pkg.mod,other.mod"``: a role defined
outside the tree, such as the tests' stand-in), and ``HEADWATER_ENTRY_POINTS`` replaces entry
points (``"storage=pkg.mod:func,gateway=pkg.other:func"``: the CLI tests run the real supervisor
over stand-in daemons; an operator may try another build of one role). An entry named there must
exist; nothing else reads the variables.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from .config import ClusterConfig, DaemonConfig, Reader

__all__ = [
    "PACKAGES", "ENV_PACKAGES", "ENV_OVERRIDE",
    "Role", "Section", "RoleSet", "StatusReport", "Registry", "RoleUnavailable",
    "registry", "entry_points", "entry_point", "resolve", "check",
]

# One line per daemon package: a module with a ``ROLE_SET``.
PACKAGES: tuple[str, ...] = (
    "headwater.objstore.roles",
    "headwater.dns.roles",
    "headwater.edge.roles",
    "headwater.drm.roles",
    "headwater.origin.roles",
)

ENV_PACKAGES = "HEADWATER_ROLE_PACKAGES"
ENV_OVERRIDE = "HEADWATER_ENTRY_POINTS"


@dataclass(frozen=True, slots=True, kw_only=True)
class Role:
    """One kind of daemon.

    ``read(reader, table, prefix)`` turns one cluster.toml table into the daemon's frozen config
    (a :class:`~headwater.config.DaemonConfig`), raising through ``reader`` so errors name the key
    and line. ``many`` means an array of tables (``[[storage]]``), else one table (``[gateway]``),
    whose config may still stand for several daemons: a non-empty ``hosts`` attribute of it
    (``[[origin.hosts]]``) lists them, each a config of its own (``ClusterConfig.daemons``).
    Roles start in ascending ``order`` (ties in registration order), each role's daemons together,
    and stop in reverse. ``details_text(health)`` is the role's DETAILS column in ``headwater
    status`` from its ``/healthz`` JSON. ``rpc`` means its daemons talk msgpack RPC to their peers,
    so they need the cluster secret (``headwater up`` makes one; ``node`` refuses to start without).
    """

    name: str
    section: str
    read: Callable[[Reader, Mapping[str, Any], str], DaemonConfig]
    entry: str
    many: bool = False
    order: int = 50
    workers: bool = False
    rpc: bool = False
    details_text: Callable[[Mapping[str, Any]], str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    """A cluster.toml section that is not a daemon (``[objstore]``, ``[[users]]``).

    ``read(reader, value)`` gets the raw TOML value; ``default()`` is what ``cfg.<name>`` gives
    when the file has no such section.
    """

    name: str
    read: Callable[[Reader, Any], Any]
    default: Callable[[], Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """A package's part of ``headwater status`` below the table, and its warnings."""

    lines: Sequence[str] = ()
    warnings: Sequence[str] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleSet:
    """Everything one daemon package adds to the kernel.

    - ``check(reader, cfg, env)``: rules across sections, once every section is read.
    - ``headline(cfg)``: a few words after the cluster's name in ``up`` and ``status``
      (``"EC 4+2, 1024 KiB stripes"``).
    - ``endpoints(cfg)``: the lines ``up`` prints for users once the cluster is healthy (an
      endpoint, credentials).
    - ``status_report(cfg, rows)``: lines and warnings ``status`` prints after its table.
    - ``commands(subparsers, config_help)``: adds the package's own subcommands; each sets
      ``func`` as the kernel's do.
    - ``tls_names(cfg)``: host names the package's TLS listeners answer for beyond their own
      addresses (the edge's distribution hostnames), put in the local CA's leaf
      (:mod:`headwater.localca`).
    - ``prepare(cfg)``: what ``up`` makes on first start before any daemon starts (the edge's
      CDN signing keys); one line to print per thing made. ``up`` reads the configuration again
      when anything was made, since sections may read the files it made.
    """

    name: str
    roles: tuple[Role, ...] = ()
    sections: tuple[Section, ...] = ()
    check: Callable[[Reader, ClusterConfig, Mapping[str, str]], None] | None = None
    headline: Callable[[ClusterConfig], str | None] | None = None
    endpoints: Callable[[ClusterConfig], list[str]] | None = None
    status_report: Callable[[ClusterConfig, list[dict[str, Any]]], StatusReport] | None = None
    commands: Callable[[Any, str], None] | None = None
    tls_names: Callable[[ClusterConfig], Iterable[str]] | None = None
    prepare: Callable[[ClusterConfig], list[str]] | None = None


class RoleUnavailable(Exception):
    """A role whose entry point cannot be imported (unknown role, missing module or function)."""

    def __init__(self, role: str, target: str | None, reason: str) -> None:
        self.role = role
        self.target = target
        super().__init__(f"role {role!r} is not available ({target or 'no entry point'}): {reason}")


class Registry:
    """The role sets of every registered package, with lookups the kernel uses."""

    def __init__(self, role_sets: Iterable[RoleSet]) -> None:
        self.role_sets = tuple(role_sets)
        order = {id(r): i for i, r in enumerate(r for s in self.role_sets for r in s.roles)}
        self._roles = tuple(sorted((r for s in self.role_sets for r in s.roles),
                                   key=lambda r: (r.order, order[id(r)])))
        self._by_name = {r.name: r for r in self._roles}
        self._sections = {s.name: s for rs in self.role_sets for s in rs.sections}
        names = [r.section for r in self._roles] + list(self._sections)
        clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & {"cluster"}))
        if clash or len(self._by_name) != len(self._roles):
            raise ValueError(f"role registry: sections or roles registered twice: {clash or 'a role name'}")

    def roles(self) -> tuple[Role, ...]:
        """Every role, in start order."""
        return self._roles

    def role(self, name: str) -> Role:
        try:
            return self._by_name[name]
        except KeyError:
            raise RoleUnavailable(name, None, f"unknown role (known: {', '.join(sorted(self._by_name))})") from None

    def sections(self) -> tuple[Section, ...]:
        return tuple(self._sections.values())

    def section_names(self) -> set[str]:
        return {r.section for r in self._roles} | set(self._sections)

    def default(self, name: str) -> Any:
        """What ``cfg.<name>`` is when cluster.toml has no such section; KeyError if unknown."""
        if name in self._sections:
            return self._sections[name].default()
        for r in self._roles:
            if r.section == name:
                return () if r.many else None
        raise KeyError(name)

    def checks(self) -> list[Callable[..., None]]:
        return [rs.check for rs in self.role_sets if rs.check is not None]


def _load_role_set(module_name: str) -> RoleSet:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"role package {module_name} cannot be imported: {e}") from e
    role_set = getattr(module, "ROLE_SET", None)
    if not isinstance(role_set, RoleSet):
        raise ImportError(f"role package {module_name} has no ROLE_SET")
    return role_set


@lru_cache(maxsize=8)
def _registry(extra: str) -> Registry:
    names = list(PACKAGES) + [m.strip() for m in extra.split(",") if m.strip()]
    return Registry(_load_role_set(m) for m in dict.fromkeys(names))


def registry(env: Mapping[str, str] | None = None) -> Registry:
    """The registry of this process: :data:`PACKAGES` plus ``HEADWATER_ROLE_PACKAGES``."""
    return _registry((os.environ if env is None else env).get(ENV_PACKAGES, ""))


def add_commands(subparsers: argparse._SubParsersAction, config_help: str) -> None:
    """Every package's own subcommands (``headwater meta …``)."""
    for rs in registry().role_sets:
        if rs.commands is not None:
            rs.commands(subparsers, config_help)


# --- entry points ------------------------------------------------------------------------------

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
    env = os.environ if env is None else env
    return {**{r.name: r.entry for r in registry(env).roles()}, **_overrides(env)}


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
