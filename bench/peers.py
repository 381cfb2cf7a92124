"""The S3 services the bench drives: our own cluster, a one-node OpenStack Swift, or any endpoint.

Each peer is a context manager that yields an :class:`Endpoint`. A peer that starts processes
writes everything under its own temporary directory (nothing under /etc), waits until its S3 port
answers, and on exit — normal, error or Ctrl-C — stops exactly the processes it started, by PID
(each is started in its own session, so its workers go with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterator

if TYPE_CHECKING:
    from headwater.config import ClusterConfig

__all__ = [
    "Endpoint",
    "PeerError",
    "ProcessGroup",
    "headwater_cluster",
    "wait_settled",
    "swift_saio",
    "gateway_pids",
    "rewrite_cluster_toml",
    "free_ports",
    "wait_port",
    "SWIFT_PACKAGES",
]

SWIFT_PACKAGES = ("swift-proxy", "swift-object", "swift-container", "swift-account",
                  "python3-swift", "memcached")


class PeerError(Exception):
    """A peer could not be set up or did not come up."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """An S3 endpoint and how to reach it; ``server_pids`` returns the S3 front-end processes."""

    name: str
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    data_dir: Path | None = None
    description: str = ""
    workers: int | None = None
    server_pids: Callable[[], list[int]] = field(default=lambda: [], repr=False)
    # Every process of the store by role ({"gateway": [...], "storage": [...]}), for the CPU
    # each batch costs the store (load.ServerCpu); empty when unknown (an external endpoint).
    process_groups: Callable[[], dict[str, list[int]]] = field(default=lambda: {}, repr=False)
    # Where the gateway's GETs of stored objects spent their time, summed over its workers
    # (their /healthz ``read_timing``); empty when unknown (Swift, an external endpoint).
    read_timing: Callable[[], dict[str, float]] = field(default=lambda: {}, repr=False)


# --- processes ---------------------------------------------------------------------------------

class ProcessGroup:
    """Processes started for one peer, stopped by PID (each leads its own process group)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], *, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=cwd, env=env, start_new_session=True)
        finally:
            log.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise PeerError(f"{name} exited with status {proc.returncode}; "
                                f"last log lines:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every group we started, then SIGKILL what is still there after ``timeout_s``."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for _, proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # The leader may be gone while its workers linger: the group id is still the leader's pid.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(5)
        self.procs.clear()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_rng = random.Random()

#: ``LO-HI``: the ports :func:`free_ports` picks from (default: 10000 up to the kernel's
#: ephemeral range). The test suite gives each of its parallel workers its own slice
#: (tests/conftest.py), inherited by the daemons and benches they start, so that two workers
#: never pick the same port between one's check and its daemon's bind.
PORT_RANGE_ENV = "HEADWATER_PORT_RANGE"


def _pick_range(ephemeral_lo: int) -> tuple[int, int]:
    text = os.environ.get(PORT_RANGE_ENV, "")
    try:
        lo, hi = (int(x) for x in text.split("-"))
    except ValueError:
        return 10000, ephemeral_lo
    return max(1024, lo), min(hi, ephemeral_lo)


def free_ports(count: int, *, udp: bool = False, exclude: Collection[int] = ()) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 a moment ago (for TCP, and for UDP too with
    ``udp``, for a DNS server), none of ``exclude``.

    Picked at random below the kernel's ephemeral range and checked by binding them: a port the
    kernel handed out for ``bind(port 0)`` can be handed out again as the source port of any
    outgoing connection (another test's, another bench client's) before the daemon binds it, and
    the daemon then fails with EADDRINUSE. Falls back to port-0 binds if that range is too small.
    All are held until all are chosen, so two in one call are never the same."""
    held: list[socket.socket] = []
    ports: list[int] = []

    def hold(port: int) -> int | None:
        t = socket.socket()
        held.append(t)
        # SO_REUSEADDR lets two unlistened sockets bind one port: never pick a port twice.
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            return None
        port = t.getsockname()[1]
        if port in exclude or port in ports:
            return None
        if udp:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(u)
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                return None
        return port

    first, end = _pick_range(_ephemeral_range()[0])
    try:
        for _ in range(50 * count):
            if len(ports) == count or end - first < 2000:
                break
            port = hold(_rng.randrange(first, end))
            if port is not None:
                ports.append(port)
        for _ in range(50 * count):
            if len(ports) == count:
                break
            port = hold(0)
            if port is not None:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) == count:
        return ports
    raise PeerError("no free ports on 127.0.0.1")


def wait_port(port: int, procs: ProcessGroup, timeout_s: float = 30.0) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:``port``; raise
    :class:`PeerError` if a process of ``procs`` died or ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise PeerError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so `finally` blocks stop our servers on `kill`, too."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_http(url: str, *, timeout_s: float, procs: ProcessGroup | None = None,
              ok: Callable[[int], bool] = lambda status: status < 500) -> None:
    """Poll ``url`` until it answers with a status ``ok`` accepts (any non-5xx by default)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if procs is not None:
            procs.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ok(r.status):
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            if ok(e.code):
                return
            last = f"HTTP {e.code}"
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.25)
    raise PeerError(f"{url} not ready after {timeout_s:.0f} s ({last})")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


# --- Headwater ---------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\"]+)\s*\]\]?")
_PORT = re.compile(r"^(\s*(?:port|admin_port|tls_port)\s*=\s*)(\d+)(.*)$")
_DATA_DIR = re.compile(r"^\s*data_dir\s*=")


def rewrite_cluster_toml(text: str, *, port_offset: int, data_dir: Path) -> str:
    """cluster.toml with every port moved by ``port_offset`` and all data under ``data_dir``.

    Works on the text so the file's comments and layout stay; node-level ``data_dir`` lines are
    dropped so every node lands in ``data_dir/<node id>``.
    """
    out: list[str] = []
    table = ""
    saw_cluster_dir = False
    for line in text.splitlines():
        h = _HEADER.match(line)
        if h and not line.lstrip().startswith("#"):
            table = h.group(1).replace('"', "")
            out.append(line)
            if table == "cluster":
                out.append(f'data_dir = "{data_dir}"')
                saw_cluster_dir = True
            continue
        if _DATA_DIR.match(line):
            continue
        m = _PORT.match(line)
        if m:
            port = int(m.group(2)) + port_offset
            if not 1 <= port <= 65535:
                raise PeerError(f"port {m.group(2)} + offset {port_offset} is outside 1..65535")
            line = f"{m.group(1)}{port}{m.group(3)}"
        out.append(line)
    if not saw_cluster_dir:
        out.insert(0, f'[cluster]\ndata_dir = "{data_dir}"\n')
    return "\n".join(out) + "\n"


def gateway_pids(gateway_id: str = "s3", config: Path | None = None) -> list[int]:
    """PIDs of the S3 gateway's processes (every ``headwater node <id>`` worker and its children).

    Unites what ``headwater status --json -c config`` reports for the gateway with a /proc scan
    for ``headwater node <gateway_id>`` (restricted to command lines naming ``config`` if given,
    so another cluster's gateway on this machine is never counted).
    """
    pids: list[int] = []
    if config is not None:
        try:
            r = subprocess.run([sys.executable, "-m", "headwater", "status", "--json", "-c", str(config)],
                               capture_output=True, timeout=15, text=True)
            for d in json.loads(r.stdout) if r.returncode == 0 else []:
                if d.get("role") == "gateway" and d.get("pid"):
                    pids.append(int(d["pid"]))
        except (OSError, ValueError, subprocess.SubprocessError, TypeError, AttributeError):
            pass
    pids += _pids_matching(lambda args: _is_node(args, gateway_id)
                           and (config is None or str(config) in args))
    out: list[int] = []
    for p in pids:
        for q in _tree(p):
            if q not in out:
                out.append(q)
    return out


def gateway_read_timing(admin_url: str, workers: int) -> dict[str, float]:
    """The gateway workers' ``read_timing`` (``/healthz``) summed: the workers share one admin
    port, so it is asked until each worker (by pid) has answered once, at most 20 times each."""
    seen: dict[int, dict] = {}
    for _ in range(20 * max(workers, 1)):
        try:
            with urllib.request.urlopen(admin_url + "/healthz", timeout=5) as r:
                doc = json.loads(r.read())
        except (OSError, ValueError):
            continue
        seen[int(doc.get("pid") or 0)] = doc.get("read_timing") or {}
        if len(seen) >= workers:
            break
    out: dict[str, float] = {}
    for timing in seen.values():
        for k, v in timing.items():
            out[k] = out.get(k, 0) + v
    return out


def _is_node(args: list[str], node_id: str) -> bool:
    if "node" not in args or not any("headwater" in a for a in args):
        return False
    i = args.index("node")
    return i + 1 < len(args) and args[i + 1] == node_id


def _pids_matching(test: Callable[[list[str]], bool]) -> list[int]:
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and test(_cmdline(int(entry.name))):
            out.append(int(entry.name))
    return out


def _stop_leftovers(config: Path) -> None:
    """SIGTERM, then SIGKILL, any process whose command line names our temp ``config`` (daemons
    the supervisor started in their own sessions and did not stop)."""
    left = _pids_matching(lambda args: str(config) in args)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if Path(f"/proc/{p}").exists() and _cmdline(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def headwater_process_groups(cfg: ClusterConfig, config: Path) -> dict[str, list[int]]:
    """The ``headwater node`` processes of the cluster started from ``config``, by role: the
    gateway's workers, the storage nodes, the metadata nodes, the repair daemon, and every other
    daemon of the cluster (GeoDNS, edges, origin, ...) as ``other``."""
    roles = {s.id: "storage" for s in cfg.storage}
    roles.update({m.id: "metadata" for m in cfg.metadata})
    if cfg.gateway is not None:
        roles[cfg.gateway.id] = "gateway"
    if cfg.repair is not None:
        roles[cfg.repair.id] = "repair"
    out: dict[str, list[int]] = {}
    for pid in _pids_matching(lambda args: str(config) in args and _node_id(args) is not None):
        node = _node_id(_cmdline(pid))
        if node is not None:
            out.setdefault(roles.get(node, "other"), []).append(pid)
    return out


def _node_id(args: list[str]) -> str | None:
    """The daemon id of a ``headwater node ID ...`` command line."""
    if "node" not in args or "headwater" not in args:
        return None
    i = args.index("node")
    return args[i + 1] if i + 1 < len(args) else None


#: The object store's roles: what ``bench objstore`` starts of the cluster (Swift runs only its
#: own servers too; the edges, DNS and origin would only add their idle CPU to the figures).
OBJSTORE_ROLES = ("metadata", "storage", "gateway", "repair")


@contextlib.contextmanager
def headwater_cluster(config: Path, work_dir: Path, *, port_offset: int = 10000,
                      ready_timeout_s: float = 60.0, roles: tuple[str, ...] | None = None) -> Iterator[Endpoint]:
    """Start ``python -m headwater up`` on a copy of ``config`` with moved ports and a temp
    data_dir; only the daemons of ``roles`` when given (``up --roles``)."""
    from headwater import config as hwconfig  # the bench's only import from the store

    work_dir.mkdir(parents=True, exist_ok=True)
    tmp_cfg = work_dir / "cluster.toml"
    tmp_cfg.write_text(rewrite_cluster_toml(config.read_text(), port_offset=port_offset,
                                            data_dir=work_dir / "var"))
    cfg = hwconfig.load(tmp_cfg)
    if cfg.gateway is None or not cfg.users:
        raise PeerError(f"{config} has no [gateway] or no [[users]]")
    if roles is not None:
        cfg = cfg.with_roles(roles)
    busy = [d.port for d in cfg.daemons() if not port_free(d.port)]
    busy += [d.admin_port for d in cfg.daemons() if not port_free(d.admin_port)]
    if busy:
        raise PeerError(f"ports {busy} are in use; pick another --port-offset")
    gw, user = cfg.gateway, cfg.users[0]
    url = f"http://{gw.host}:{gw.port}"
    procs = ProcessGroup(work_dir)
    with _sigterm_as_interrupt():
        try:
            only = ["--roles", ",".join(roles)] if roles is not None else []
            procs.start("headwater", [sys.executable, "-m", "headwater", "up", "-c", str(tmp_cfg), *only],
                        cwd=work_dir)
            wait_http(url + "/", timeout_s=ready_timeout_s, procs=procs)
            waited = wait_settled(cfg, timeout_s=ready_timeout_s, procs=procs)
            print(f"headwater: every daemon answers, the repair daemon's first pass is over "
                  f"({waited:.1f} s after the S3 port)", file=sys.stderr, flush=True)
            yield Endpoint(
                name="headwater", url=url, access_key=user.access_key, secret_key=user.secret_key,
                region=cfg.objstore.region, data_dir=cfg.data_dir, workers=gw.workers,
                description=f"Headwater, {cfg.objstore.ec.describe()}, {gw.workers} gateway workers",
                server_pids=lambda: gateway_pids(gw.id, tmp_cfg),
                process_groups=lambda: headwater_process_groups(cfg, tmp_cfg),
                read_timing=lambda: gateway_read_timing(f"http://{gw.host}:{gw.admin_port}", gw.workers),
            )
        finally:
            procs.stop(timeout_s=20.0)
            _stop_leftovers(tmp_cfg)


def wait_settled(cfg: ClusterConfig, *, timeout_s: float, procs: ProcessGroup | None = None) -> float:
    """Wait until every daemon of ``cfg`` answers on its admin port and, if the cluster has a
    repair daemon, its first pass is over; the seconds waited.

    ``headwater up`` starts the roles in order and the S3 port answers before the roles after
    the gateway (the repair daemon) have started: measured from then, the first row paid for
    their start (the repair daemon's imports and first pass, ~1.1 s of CPU, most of it the
    start: a pass over a fresh cluster takes ~0.1 s) while Swift's servers were all up before
    its first request. The waits are short (a few seconds) and bounded by ``timeout_s``."""
    t0 = time.monotonic()
    for d in cfg.daemons():
        wait_http(f"http://{d.host}:{d.admin_port}/healthz", timeout_s=timeout_s, procs=procs,
                  ok=lambda status: True)
    repair = getattr(cfg, "repair", None)
    if repair is not None:
        url = f"http://{repair.host}:{repair.admin_port}/healthz"
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    doc = json.loads(r.read())
                if int(doc.get("passes") or 0) >= 1 and not doc.get("pass_running"):
                    break
            except (OSError, ValueError, urllib.error.URLError):
                pass
            time.sleep(0.25)
    return time.monotonic() - t0


def external_endpoint(url: str, *, access_key: str, secret_key: str, region: str = "us-east-1",
                      gateway_id: str = "s3", data_dir: Path | None = None) -> Endpoint:
    """An already running endpoint; its gateway processes are found by scanning /proc."""
    return Endpoint(name="ours", url=url.rstrip("/"), access_key=access_key, secret_key=secret_key,
                    region=region, data_dir=data_dir, description=f"endpoint {url}",
                    server_pids=lambda: gateway_pids(gateway_id))


# --- OpenStack Swift (SAIO-style, one node) --------------------------------------------------------

_SERVER_CONF = """\
[DEFAULT]
devices = {base}/srv
mount_check = false
disable_fallocate = true
bind_ip = 127.0.0.1
bind_port = {port}
workers = {workers}
swift_dir = {base}/etc
user = {user}
log_facility = LOG_LOCAL2

[pipeline:main]
pipeline = healthcheck recon {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}

[filter:recon]
use = egg:swift#recon
recon_cache_path = {base}/cache

[filter:healthcheck]
use = egg:swift#healthcheck

{extra}
"""

_SERVER_EXTRA = {
    "object": "[object-replicator]\n[object-updater]\n[object-auditor]\n",
    "container": "[container-replicator]\n[container-updater]\n[container-sync]\n[container-auditor]\n",
    "account": "[account-replicator]\n[account-updater]\n[account-auditor]\n",
}

_PROXY_CONF = """\
# Swift proxy with s3api + tempauth, loopback only. S3 credentials: access key "ACCOUNT:USER",
# secret = the tempauth key (test:tester / testing).
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = {workers}
swift_dir = {base}/etc
user = {user}
log_facility = LOG_LOCAL1
eventlet_debug = false

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit s3api tempauth copy container-quotas account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
allow_account_management = true
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1
dns_compliant_bucket_names = True
s3_acl = false
allow_multipart_uploads = true
max_upload_part_num = 10000
check_bucket_owner = false

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached_port}
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:ratelimit]
use = egg:swift#ratelimit
[filter:copy]
use = egg:swift#copy
[filter:container-quotas]
use = egg:swift#container_quotas
[filter:account-quotas]
use = egg:swift#account_quotas
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
allow_object_versioning = true
[filter:symlink]
use = egg:swift#symlink
"""


def swift_missing() -> list[str]:
    """What this machine lacks to run Swift (commands and /etc/swift/swift.conf)."""
    missing = [c for c in ("swift-proxy-server", "swift-object-server", "swift-container-server",
                           "swift-account-server", "swift-ring-builder", "memcached")
               if shutil.which(c) is None]
    # Swift reads its hash prefix/suffix and policies from this fixed path (not swift_dir);
    # the Debian package ships one with policy 0 (replication), which is all the bench needs.
    if not Path("/etc/swift/swift.conf").is_file():
        missing.append("/etc/swift/swift.conf")
    return missing


@contextlib.contextmanager
def swift_saio(base: Path, *, replicas: int = 3, workers: int = 2, port_base: int = 16010,
               ready_timeout_s: float = 60.0) -> Iterator[Endpoint]:
    """A one-node Swift with s3api + tempauth: ``replicas`` devices on one object server.

    Ports: object ``port_base``, container +1, account +2, proxy +70, memcached +201
    (16010/16011/16012/16080/16211 by default, as in the SAIO recipe).
    """
    missing = swift_missing()
    if missing:
        raise PeerError(f"Swift is not installed ({', '.join(missing)}): run scripts/install-bench-deps.sh")
    ports = {"object": port_base, "container": port_base + 1, "account": port_base + 2,
             "proxy": port_base + 70, "memcached": port_base + 201}
    busy = [f"{k}:{p}" for k, p in ports.items() if not port_free(p)]
    if busy:
        raise PeerError(f"Swift ports in use: {', '.join(busy)}")
    for sub in ("etc", "run", "log", "cache"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(1, replicas + 1):
        (base / "srv" / f"sdb{i}").mkdir(parents=True, exist_ok=True)
    etc = base / "etc"
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    for kind in ("object", "container", "account"):
        (etc / f"{kind}-server.conf").write_text(_SERVER_CONF.format(
            base=base, port=ports[kind], workers=workers, user=user, kind=kind,
            extra=_SERVER_EXTRA[kind]))
    (etc / "proxy-server.conf").write_text(_PROXY_CONF.format(
        base=base, port=ports["proxy"], workers=workers, user=user, memcached_port=ports["memcached"]))
    for kind in ("object", "container", "account"):
        builder = str(etc / f"{kind}.builder")
        _run(["swift-ring-builder", builder, "create", "10", str(replicas), "1"])
        for i in range(1, replicas + 1):
            _run(["swift-ring-builder", builder, "add", f"r1z{i}-127.0.0.1:{ports[kind]}/sdb{i}", "100"])
        # rebalance exits 1 with a warning on a one-host ring; the ring file is still written.
        subprocess.run(["swift-ring-builder", builder, "rebalance"], capture_output=True)
        if not (etc / f"{kind}.ring.gz").exists():
            raise PeerError(f"swift-ring-builder did not write {kind}.ring.gz")

    procs = ProcessGroup(base / "log")
    url = f"http://127.0.0.1:{ports['proxy']}"
    with _sigterm_as_interrupt():
        try:
            procs.start("memcached", ["memcached", "-u", user, "-l", "127.0.0.1",
                                      "-p", str(ports["memcached"]), "-U", "0"])
            for kind in ("object", "container", "account", "proxy"):
                procs.start(kind, [f"swift-{kind}-server", str(etc / f"{kind}-server.conf")], cwd=base)
            for kind in ("object", "container", "account", "proxy"):
                wait_http(f"http://127.0.0.1:{ports[kind]}/healthcheck", timeout_s=ready_timeout_s,
                          procs=procs, ok=lambda s: s == 200)
            proxy_pid = next(p.pid for n, p in procs.procs if n == "proxy")
            yield Endpoint(
                name="swift", url=url, access_key="test:tester", secret_key="testing",
                region="us-east-1", data_dir=base / "srv", workers=workers,
                description=f"Swift {_swift_version()}, {replicas} replicas, {workers} workers per server",
                server_pids=lambda: _tree(proxy_pid),
                process_groups=lambda: {name: _tree(p.pid) for name, p in procs.procs},
            )
        finally:
            procs.stop()


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise PeerError(f"{' '.join(argv)} failed: {r.stderr.strip() or r.stdout.strip()}")


def _swift_version() -> str:
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-swift"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.split("-")[0] or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"
