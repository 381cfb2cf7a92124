"""A role defined only here, outside the tree: the proof that a daemon package needs nothing from
the kernel but one registration (``HEADWATER_ROLE_PACKAGES=tests.functional.standin_role``).

``[[beacon]]`` daemons answer every HTTP request with their ``greeting`` and count the requests;
``headwater beacon ping`` asks each one.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Mapping

import anyio
import httpx

from headwater.admin import serve_admin
from headwater.config import ClusterConfig, Reader, load
from headwater.http import Response, serve
from headwater.metrics import Registry
from headwater.roles import Role, RoleSet, StatusReport


@dataclass(frozen=True, slots=True, kw_only=True)
class BeaconConfig:
    """One beacon: where it listens and what it says."""

    id: str
    host: str = "127.0.0.1"
    port: int
    admin_port: int
    greeting: str = "hello"

    @property
    def role(self) -> str:
        return "beacon"


def read_beacon(r: Reader, item: Mapping[str, Any], p: str) -> BeaconConfig:
    r.check_keys(item, p, {"id", "host", "port", "admin_port", "greeting"})
    greeting = r.get(item, "greeting", p, str, "hello")
    if not greeting.isprintable():
        raise r.error(f"{p}.greeting", "must be printable")
    return BeaconConfig(id=r.node_id(item, p), host=r.get(item, "host", p, str, "127.0.0.1"),
                        port=r.port(item, "port", p), admin_port=r.port(item, "admin_port", p),
                        greeting=greeting)


async def run_beacon(cluster: ClusterConfig, node: BeaconConfig, *,
                     task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    served = 0
    registry = Registry()
    requests = registry.counter("beacon_requests_total", "Requests answered.")

    async def app(request: Any) -> Response:
        nonlocal served
        served += 1
        requests.inc()
        return Response(200, [("content-type", "text/plain")], f"{node.greeting} from {node.id}\n".encode())

    async def health() -> dict[str, Any]:
        return {"greeting": node.greeting, "served": served}

    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve(app, host=node.host, port=node.port, task_status=task_status))
        await tg.start(lambda task_status: serve_admin(host=node.host, port=node.admin_port, health=health,
                                                       registry=registry, task_status=task_status))
        task_status.started()


def _ping(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    for b in cfg.beacon:
        print(httpx.get(f"http://{b.host}:{b.port}/", trust_env=False).text.strip())
    return 0


def _commands(sub: Any, config_help: str) -> None:
    p = sub.add_parser("beacon", help="ask every beacon for its greeting")
    p.add_argument("action", choices=("ping",))
    p.add_argument("-c", "--config", metavar="FILE", help=config_help)
    p.set_defaults(func=_ping)


ROLE_SET = RoleSet(
    name="beacons",
    roles=(Role(name="beacon", section="beacon", many=True, order=5, read=read_beacon,
                entry="tests.functional.standin_role:run_beacon",
                details_text=lambda d: f"says {d.get('greeting')!r}, served {d.get('served', 0)}"),),
    headline=lambda cfg: f"{len(cfg.beacon)} beacon{'s' if len(cfg.beacon) != 1 else ''}" if cfg.beacon else None,
    endpoints=lambda cfg: [f"beacon        http://{b.host}:{b.port}/" for b in cfg.beacon],
    status_report=lambda cfg, rows: StatusReport(
        lines=[f"beacons: {sum(r['healthy'] for r in rows if r['role'] == 'beacon')} answering"]),
    commands=_commands,
)
