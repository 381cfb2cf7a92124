"""The tests' throwaway PostgreSQL server: :mod:`headwater.bench.postgres_server` (shared with the
search benchmark), on a port picked the tests' way (below the ephemeral range)."""

from __future__ import annotations

import os
import subprocess

from headwater.bench.postgres_server import PostgresServer, find_initdb
from headwater.bench.postgres_server import start_postgres as _start
from tests.cluster import free_ports

__all__ = ["PostgresServer", "find_initdb", "start_postgres", "stop_immediately"]


def start_postgres(timeout_s: float = 20.0) -> PostgresServer:
    """initdb and start a server; raise RuntimeError with its log if it does not come up."""
    return _start(timeout_s, port=free_ports(1)[0])


def stop_immediately(pg: PostgresServer) -> None:
    """``pg_ctl stop -m immediate``: the postmaster and its backends quit at once, no checkpoint
    (a crash, as far as the data folder knows: a kept one restarts through crash recovery)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, str(find_initdb().parent / "pg_ctl"), "stop", "-m", "immediate", "-D",
                    str(pg.root / "data")], check=True, capture_output=True, timeout=60)
    pg.proc.wait(30)
