"""The tests' throwaway PostgreSQL server: :mod:`headwater.bench.postgres_server` (shared with the
search benchmark), on a port picked the tests' way (below the ephemeral range)."""

from __future__ import annotations

from headwater.bench.postgres_server import PostgresServer, find_initdb
from headwater.bench.postgres_server import start_postgres as _start
from tests.cluster import free_ports

__all__ = ["PostgresServer", "find_initdb", "start_postgres"]


def start_postgres(timeout_s: float = 20.0) -> PostgresServer:
    """initdb and start a server; raise RuntimeError with its log if it does not come up."""
    return _start(timeout_s, port=free_ports(1)[0])
