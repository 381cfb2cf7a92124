"""The supervisor behind ``headwater up``: one child process per daemon (per worker for roles that
run ``workers`` processes on one port, such as the S3 gateway).

Roles start in the registry's order (:mod:`headwater.roles`; for the object store metadata ->
storage -> gateway -> repair). The daemons of one role start together (metadata nodes may need a
quorum of their peers before they report healthy) and the next role starts only
when every one of them answers ``/healthz`` on its admin port with ``"status": "ok"``, or
``"degraded"``: serving, with a dependency it does not start itself away (the origin with its
PostgreSQL down; :mod:`headwater.health`); such a daemon is started, and shown as degraded.
Any other answer is waited for. If any cannot start, everything already started is stopped
and :class:`StartupError` says which daemon failed and shows the end of its log: nothing is
left half-started.

Once up, a child that exits is restarted after a delay that :class:`BackoffPolicy` decides. On
cancellation (``up`` turns SIGINT/SIGTERM into one) children are stopped in reverse order: SIGTERM,
then SIGKILL after ``stop_grace_s``.

Each child's stdout and stderr go to ``<data_dir>/logs/<id>.log``; ``<data_dir>/run/state.json``
records pids and states for ``headwater status``. Children run in their own session, so a Ctrl-C
in the terminal reaches only the supervisor, which then stops them in order; a child whose
supervisor vanishes (SIGKILL) notices through ``HEADWATER_SUPERVISOR_PID`` and exits.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import anyio
import httpx
from anyio.abc import Process, TaskStatus

from .clock import SYSTEM_CLOCK, Clock
from .config import ClusterConfig, DaemonConfig, port_keys
from .health import Health, health_of
from .log import Logger, get_logger
from .roles import registry
from .status import url_host

__all__ = [
    "BackoffPolicy",
    "ChildSpec",
    "StartupError",
    "Supervisor",
    "child_specs",
    "check_ports",
    "log_dir",
    "state_path",
    "read_state",
    "SUPERVISOR_PID_ENV",
]

SUPERVISOR_PID_ENV = "HEADWATER_SUPERVISOR_PID"


# --- restart policy (pure) ---------------------------------------------------------------------

class BackoffPolicy:
    """When to restart a child that exited: exponential backoff, forgiven after a stable run.

    ``started()`` when the child is (re)started, ``exited()`` when it exits; ``exited`` returns the
    seconds to wait before the next start. Delays go ``initial_s, initial_s*factor, ...`` up to
    ``max_s``; a child that ran for at least ``reset_after_s`` starts again from ``initial_s``.
    """

    def __init__(self, *, clock: Clock, initial_s: float = 0.5, factor: float = 2.0,
                 max_s: float = 30.0, reset_after_s: float = 60.0) -> None:
        if initial_s < 0 or factor < 1 or max_s < initial_s or reset_after_s < 0:
            raise ValueError("backoff needs 0 <= initial_s <= max_s, factor >= 1, reset_after_s >= 0")
        self._clock = clock
        self.initial_s = initial_s
        self.factor = factor
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self.restarts = 0              # every restart so far
        self.consecutive_failures = 0  # exits since the last stable run
        self._started_at: float | None = None

    def started(self) -> None:
        self._started_at = self._clock.monotonic()

    def uptime(self) -> float:
        return 0.0 if self._started_at is None else self._clock.monotonic() - self._started_at

    def exited(self) -> float:
        """Record an exit; return the delay in seconds before restarting."""
        if self._started_at is not None and self.uptime() >= self.reset_after_s:
            self.consecutive_failures = 0
        self._started_at = None
        delay = min(self.max_s, self.initial_s * self.factor ** self.consecutive_failures)
        self.consecutive_failures += 1
        self.restarts += 1
        return delay


# --- what to run ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    """One child process: a daemon, or one worker of a daemon that runs several."""

    daemon_id: str
    role: str
    worker: int | None
    host: str
    port: int
    admin_port: int

    @property
    def name(self) -> str:
        return self.daemon_id if self.worker is None else f"{self.daemon_id}#{self.worker}"

    def argv(self, python: str, config_path: Path) -> list[str]:
        argv = [python, "-m", "headwater", "node", self.daemon_id, "-c", str(config_path)]
        if self.worker is not None:
            argv += ["--worker", str(self.worker)]
        return argv


def child_specs(cfg: ClusterConfig) -> list[ChildSpec]:
    """Every child process ``up`` starts, in start order."""
    out: list[ChildSpec] = []
    with_workers = {r.name for r in registry().roles() if r.workers}
    for d in cfg.daemons():
        workers: Sequence[int | None] = range(getattr(d, "workers")) if d.role in with_workers else (None,)
        for w in workers:
            out.append(ChildSpec(daemon_id=d.id, role=d.role, worker=w, host=d.host, port=d.port,
                                 admin_port=d.admin_port))
    return out


def log_dir(cfg: ClusterConfig) -> Path:
    return cfg.data_dir / "logs"


def state_path(cfg: ClusterConfig) -> Path:
    return cfg.data_dir / "run" / "state.json"


def read_state(cfg: ClusterConfig) -> dict[str, Any] | None:
    """The last state.json the supervisor wrote, or None."""
    try:
        return json.loads(state_path(cfg).read_text())
    except (OSError, ValueError):
        return None


def _bind_error(host: str, port: int, *, reuse_port: bool = False) -> str | None:
    """Why ``host:port`` cannot be listened on, or None if it can (checked by binding)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot resolve {host}: {e.strerror}"
    family, _, _, _, addr = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(addr)
    except OSError as e:
        return listen_error_text(e)
    finally:
        s.close()
    return None


def listen_error_text(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "address already in use"
    if e.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    if e.errno == errno.EACCES:
        return "permission denied"
    return (e.strerror or str(e)).lower()


def check_ports(daemons: Sequence[DaemonConfig], *, reuse_port: bool = False) -> list[str]:
    """One line per port that cannot be listened on: ``"storage-1: cannot listen on h:p: why"``."""
    problems = []
    for d in daemons:
        for port in dict.fromkeys(getattr(d, key) for key in port_keys(d)):
            why = _bind_error(d.host, port, reuse_port=reuse_port)
            if why:
                problems.append(f"{d.id}: cannot listen on {d.host}:{port}: {why}")
    return problems


class StartupError(Exception):
    """A daemon that could not start; ``up`` stops everything and reports this."""

    def __init__(self, daemon_id: str, reason: str, *, log_path: Path | None = None,
                 log_tail: Sequence[str] = ()) -> None:
        self.daemon_id = daemon_id
        self.reason = reason
        self.log_path = log_path
        self.log_tail = list(log_tail)
        super().__init__(f"{daemon_id}: {reason}")

    def report(self) -> str:
        """The message for an operator: what failed and the end of its log."""
        lines = [f"{self.daemon_id} failed to start: {self.reason}"]
        if self.log_tail:
            lines.append(f"last lines of {self.log_path}:")
            lines += [f"  {line}" for line in self.log_tail]
        return "\n".join(lines)


# --- the supervisor ------------------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class _Child:
    spec: ChildSpec
    policy: BackoffPolicy
    log_path: Path
    process: Process | None = None
    pid: int | None = None
    state: str = "new"        # new, starting, running, restarting, exited, stopped
    exit_code: int | None = None
    started_at: float | None = None
    log_offset: int = 0
    health: Health | None = None  # what /healthz said when ``up`` counted it started
    pids_seen: set[int] = field(default_factory=set)

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


def _tail(path: Path, offset: int, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()[-64 * 1024:]
    except OSError:
        return []
    return [ln.decode("utf-8", "replace") for ln in deque(data.splitlines(), maxlen=lines)]


class Supervisor:
    """Starts, watches and stops the children of one cluster.

    ``await tg.start(sup.run)`` returns once every daemon is healthy (or raises StartupError);
    cancelling the task stops them all.
    """

    def __init__(self, cfg: ClusterConfig, *, clock: Clock = SYSTEM_CLOCK,
                 start_timeout_s: float = 30.0, stop_grace_s: float = 10.0,
                 python: str = sys.executable, env: Mapping[str, str] | None = None,
                 logger: Logger | None = None, backoff: Mapping[str, float] | None = None,
                 argv: Callable[[ChildSpec], Sequence[str]] | None = None) -> None:
        # Children re-read cluster.toml (``headwater node``), unless ``argv`` says how each one
        # starts (``headwater edge serve --workers N``: its cluster lives in its flags, no file).
        if cfg.path is None and argv is None:
            raise ValueError("the supervisor needs a config loaded from a file (children re-read it)")
        self.cfg = cfg
        self.config_path = Path(cfg.path) if cfg.path is not None else None
        self._argv = argv
        self.clock = clock
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.log = logger or get_logger("supervisor", level=cfg.log_level)
        self.log_dir = log_dir(cfg)
        self.state_path = state_path(cfg)
        self.children = [
            _Child(spec=s, policy=BackoffPolicy(clock=clock, **(backoff or {})),
                   log_path=self.log_dir / f"{s.daemon_id}.log")
            for s in child_specs(cfg)
        ]
        self._stopping = False
        self._started_at = time.time()

    # -- public -------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        failure: StartupError | None = None
        try:
            async with anyio.create_task_group() as tg:
                try:
                    await self._start_all()
                except StartupError as e:
                    failure = e
                    tg.cancel_scope.cancel()
                else:
                    for child in self.children:
                        tg.start_soon(self._watch, child, name=f"watch {child.spec.name}")
                    self.log.info("cluster.up", daemons=len(self.cfg.daemons()),
                                  processes=len(self.children))
                    task_status.started(self)
                    await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop_all()
        if failure is not None:
            raise failure

    def snapshot(self) -> list[dict[str, Any]]:
        """What state.json holds for each child."""
        return [
            {"id": c.spec.daemon_id, "role": c.spec.role, "worker": c.spec.worker, "pid": c.pid,
             "state": c.state, "restarts": c.policy.restarts, "exit_code": c.exit_code,
             "started_at": c.started_at, "log": str(c.log_path),
             "health_at_start": c.health.value if c.health is not None else None}
            for c in self.children
        ]

    # -- starting -----------------------------------------------------------------------------

    async def _start_all(self) -> None:
        for role in _role_order():
            group = [c for c in self.children if c.spec.role == role]
            if not group:
                continue
            for child in group:
                await self._spawn(child)
            by_daemon: dict[str, list[_Child]] = {}
            for child in group:
                by_daemon.setdefault(child.spec.daemon_id, []).append(child)
            errors: list[StartupError] = []

            async def wait(children: list[_Child]) -> None:
                try:
                    await self._wait_healthy(children)
                except StartupError as e:
                    errors.append(e)
                    tg.cancel_scope.cancel()

            async with anyio.create_task_group() as tg:
                for children in by_daemon.values():
                    tg.start_soon(wait, children)
            if errors:
                raise errors[0]
            for child in group:
                child.state = "running"
            self._write_state()

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = {**self.env, "PYTHONUNBUFFERED": "1", SUPERVISOR_PID_ENV: str(os.getpid())}
        with open(child.log_path, "ab") as out:
            child.log_offset = out.tell()
            try:
                argv = (list(self._argv(spec)) if self._argv is not None
                        else spec.argv(self.python, self.config_path))  # type: ignore[arg-type]
                child.process = await anyio.open_process(
                    argv, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=out, env=env, start_new_session=True)
            except OSError as e:
                raise StartupError(spec.name, f"cannot run {self.python}: {e}") from e
        child.pid = child.process.pid
        child.exit_code = None
        child.state = "starting"
        child.started_at = time.time()
        child.policy.started()
        self.log.info("child.started", child=spec.name, pid=child.pid, log=str(child.log_path))
        self._write_state()

    async def _wait_healthy(self, children: list[_Child]) -> None:
        """Until /healthz says the daemon is started (ok or degraded: :mod:`headwater.health`)
        and (for workers sharing a port) every worker has answered so."""
        spec = children[0].spec
        url = f"http://{url_host(spec.host)}:{spec.admin_port}/healthz"
        deadline = self.clock.monotonic() + self.start_timeout_s
        pending = {c.pid for c in children}
        degraded = False  # some worker answered "degraded": the daemon is shown so
        last = "no answer yet"
        limits = httpx.Limits(max_keepalive_connections=0)  # new connection: any worker may answer
        async with httpx.AsyncClient(timeout=2.0, limits=limits, trust_env=False) as client:
            while True:
                for c in children:
                    if c.process is not None and c.process.returncode is not None:
                        c.exit_code = c.process.returncode
                        c.state = "exited"
                        raise StartupError(c.spec.name, f"exited with {_exit_text(c.exit_code)}",
                                           log_path=c.log_path, log_tail=_tail(c.log_path, c.log_offset))
                try:
                    r = await client.get(url)
                    doc = _json(r)
                    health = health_of(r.status_code, doc)
                    if health.started:
                        degraded = degraded or health is Health.DEGRADED
                        pid = doc.get("pid")
                        if isinstance(pid, int) and len(children) > 1:
                            pending.discard(pid)
                        if not isinstance(pid, int) or len(children) == 1 or not pending:
                            self._started(children, Health.DEGRADED if degraded else Health.OK, doc)
                            return
                        last = f"waiting for {len(pending)} more worker(s) to answer"
                        if self.clock.monotonic() < deadline:
                            # The port is up; each new connection lands on some worker, so ask
                            # again at once rather than sleep (256 workers need ~1,500 tries).
                            await anyio.sleep(0)
                            continue
                    else:
                        last = f"/healthz answered {r.status_code}: {r.text[:200].strip()}"
                except httpx.HTTPError as e:
                    last = f"{url}: {type(e).__name__} {e}".strip()
                if self.clock.monotonic() >= deadline:
                    c = next((c for c in children if c.pid in pending), children[0])
                    raise StartupError(c.spec.name, f"not healthy after {self.start_timeout_s:g}s ({last})",
                                       log_path=c.log_path, log_tail=_tail(c.log_path, c.log_offset))
                await self.clock.sleep(0.05)

    def _started(self, children: list[_Child], health: Health, doc: dict[str, Any]) -> None:
        for c in children:
            c.health = health
        if health is Health.DEGRADED:
            # Started all the same: it serves what it can and waits for its dependency itself.
            self.log.warning("child.degraded", child=children[0].spec.daemon_id,
                             error=str(doc.get("error", ""))[:300])

    # -- watching -----------------------------------------------------------------------------

    async def _watch(self, child: _Child) -> None:
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            child.exit_code = code
            child.state = "restarting"
            delay = child.policy.exited()
            self.log.error("child.exited", child=child.spec.name, pid=child.pid,
                           exit=_exit_text(code), restart_in_s=round(delay, 3),
                           restarts=child.policy.restarts, log=str(child.log_path),
                           tail=_tail(child.log_path, child.log_offset, 5))
            self._write_state()
            await self.clock.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn(child)
            except StartupError as e:
                self.log.error("child.restart_failed", child=child.spec.name, error=e.reason)
                child.process = None
                return
            child.state = "running"
            self._write_state()

    # -- stopping -----------------------------------------------------------------------------

    async def _stop_all(self) -> None:
        self._stopping = True
        for role in reversed(_role_order()):
            group = [c for c in self.children if c.spec.role == role and c.process is not None]
            async with anyio.create_task_group() as tg:
                for child in group:
                    tg.start_soon(self._stop_one, child)
        if any(c.process is not None for c in self.children):
            self.log.info("cluster.stopped")
        self._write_state()

    async def _stop_one(self, child: _Child) -> None:
        proc = child.process
        assert proc is not None
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            with anyio.move_on_after(self.stop_grace_s):
                await proc.wait()
            if proc.returncode is None:
                self.log.warning("child.killed", child=child.spec.name, pid=child.pid,
                                 grace_s=self.stop_grace_s)
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                await proc.wait()
        else:
            await proc.wait()
        child.exit_code = proc.returncode
        if child.state != "exited":
            child.state = "stopped"
        await proc.aclose()

    # -- state file ---------------------------------------------------------------------------

    def _write_state(self) -> None:
        doc = {"cluster": self.cfg.name, "config": str(self.config_path) if self.config_path else None,
               "supervisor_pid": os.getpid(),
               "stopping": self._stopping, "started_at": self._started_at, "updated_at": time.time(),
               "children": self.snapshot()}
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, self.state_path)
        except OSError as e:
            self.log.warning("state.write_failed", path=str(self.state_path), error=str(e))


def _role_order() -> list[str]:
    return [r.name for r in registry().roles()]


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
