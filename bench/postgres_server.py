"""A throwaway PostgreSQL server (for the tests and the search benchmark): Debian's binaries, initdb into a temporary folder,
listening on 127.0.0.1 on a free port and a unix socket in that folder, stopped at the end.

PostgreSQL refuses to run as root: when the tests run as root the server runs as the
``postgres`` user (the Debian package creates it) through ``runuser``. Durability is switched off
(fsync, full_page_writes, synchronous_commit): the data is thrown away, and startup takes about a
second.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


__all__ = ["PostgresServer", "find_initdb", "start_postgres"]


def find_initdb() -> Path | None:
    """The newest Debian ``initdb``, or None when the postgresql package is missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]) if found else None


def _free_port() -> int:
    # Port 0: the kernel's pick (the tests pass a port of their own, chosen below the ephemeral range).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server; ``dsn(dbname)`` connects as the superuser ``hw`` without a password."""

    root: Path
    port: int
    proc: subprocess.Popen
    # A kept data folder (start_postgres(data_dir=...)) is left in place by stop().
    keep: bool = False

    def dsn(self, dbname: str = "postgres", **extra: str) -> str:
        parts = [f"host=127.0.0.1 port={self.port} user=hw dbname={dbname}"]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # "fast" shutdown (SIGINT: no waiting for clients), to the group: runuser does not
            # forward it.
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(timeout_s: float = 20.0, *, port: int | None = None,
                   settings: dict[str, str] | None = None, data_dir: Path | None = None) -> PostgresServer:
    """initdb and start a server on ``port`` (a free one by default), with extra ``-c``
    ``settings``; raise RuntimeError with its log if it does not come up. With ``data_dir`` the
    server's folder is that one, kept when it stops and started again as it is the next time
    (the search benchmark seeds 100,000 titles once)."""
    initdb = find_initdb()
    if initdb is None:
        raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
    bindir = initdb.parent
    if data_dir is not None:
        root = data_dir
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="hw-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    if not (data / "PG_VERSION").exists():
        subprocess.run([*prefix, str(initdb), "-D", str(data), "-U", "hw", "-A", "trust", "-E", "UTF8",
                        "--locale=C", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True, timeout=60)
    port = port or _free_port()
    extra = [a for k, v in (settings or {}).items() for a in ("-c", f"{k}={v}")]
    log = root / "postgres.log"
    proc = subprocess.Popen(
        [*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(root), "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
         "-c", "shared_buffers=64MB", "-c", "max_connections=50", *extra],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
    server = PostgresServer(root=root, port=port, proc=proc, keep=data_dir is not None)
    deadline = time.monotonic() + timeout_s
    import psycopg
    while True:
        try:
            with psycopg.connect(server.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return server
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                server.stop()
                raise RuntimeError(f"PostgreSQL did not start:\n{text}") from None
            time.sleep(0.05)
