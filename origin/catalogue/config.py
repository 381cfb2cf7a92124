"""The catalogue's part of cluster.toml, ``[origin.catalogue]``, read once into a frozen dataclass.

Keys (every default here)::

    backend            "sqlite" (embedded, one host) | "postgresql" (several origin hosts)
    path               the SQLite file (default <origin data_dir>/catalogue.sqlite3)
    dsn                libpq connection string for PostgreSQL ("host=db1 dbname=headwater user=origin");
                       put no password in it: libpq reads ~/.pgpass or PGPASSWORD
    dsn_env            or: the environment variable holding the DSN
    pool_size          PostgreSQL connections per process (4)
    search             PostgreSQL: "local" (default): each origin searches its own SQLite copy of
                       the published titles' search index (<origin data_dir>/search-index.sqlite3,
                       derived data fed from the database's search feed: localsearch.py), or
                       "database": every search runs in PostgreSQL; SQLite ignores it
    search_wait_seconds        search = "local": how long a search waits for a database
                       connection before it answers from the local index alone (1)
    search_retry_seconds       after the database failed (a search, a publish lookup), searches
                       answer from the local index, and publish lookups from their kept
                       verdicts, without trying it for this long; then one caller tries (5)
    search_stale_max_seconds   the oldest local index (seconds since it last matched the
                       database's feed) a search answers from while the database is away;
                       past it, 503 (3600; 0: never answer without the database)
    mmap_mib           SQLite: how much of the file readers map into memory (1024; 0: none): a
                       search's probes then read the OS page cache in place instead of copying
                       each page through a read(2) into SQLite's own small cache
    connect_timeout_seconds   (5)
    statement_timeout_ms      a query running longer is cancelled (PostgreSQL; 2000)
    max_query_chars, max_terms, max_page_size, max_offset    search bounds (200, 8, 100, 1000)
    exact_total_max    a search's total and facets are exact up to this many matches, past it
                       "more than N" (200): the count stops there
    job_max_attempts   runs of a job before it is dead (5)
    job_lease_seconds  a worker's default lease (60)
    backoff_base_seconds, backoff_cap_seconds   retry delays (5, 3600)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from headwater.config import Reader

from .backoff import Backoff
from .query import SearchLimits

__all__ = ["CatalogueConfig", "read_catalogue", "BACKENDS"]

BACKENDS = ("sqlite", "postgresql")

SEARCH_MODES = ("local", "database")

_KEYS = {"backend", "path", "dsn", "dsn_env", "pool_size", "mmap_mib", "connect_timeout_seconds", "search",
         "statement_timeout_ms", "search_wait_seconds", "search_retry_seconds",
         "search_stale_max_seconds", "max_query_chars", "max_terms", "max_page_size", "max_offset",
         "exact_total_max",
         "job_max_attempts", "job_lease_seconds", "backoff_base_seconds", "backoff_cap_seconds"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogueConfig:
    """Where the catalogue lives and the bounds it enforces."""

    backend: str = "sqlite"
    path: Path | None = None
    dsn: str | None = None
    # PostgreSQL: the local search index's file (search = "local"); None: search in the database.
    search_index: Path | None = None
    pool_size: int = 4
    mmap_mib: int = 1024
    connect_timeout_s: float = 5.0
    statement_timeout_ms: int = 2000
    # The local search index while the database is away (localsearch.py): the wait a search
    # gives it, how long searches then skip it (the breaker's interval), and the staleness
    # past which a search fails rather than answer from the index alone.
    search_wait_s: float = 1.0
    search_retry_s: float = 5.0
    search_stale_max_s: float = 3600.0
    search: SearchLimits = field(default_factory=SearchLimits)
    job_max_attempts: int = 5
    job_lease_s: float = 60.0
    backoff: Backoff = field(default_factory=Backoff)


def read_catalogue(r: Reader, item: Mapping[str, Any], p: str, data_dir: Path) -> CatalogueConfig:
    """The ``[origin.catalogue]`` table (``p`` is its dotted name; ``data_dir`` the origin's)."""
    r.check_keys(item, p, _KEYS)
    backend = r.get(item, "backend", p, str, "sqlite")
    if backend not in BACKENDS:
        raise r.error(f"{p}.backend", f"{backend!r} is not one of {', '.join(BACKENDS)}")
    path = None
    dsn = None
    search_index = None
    mode = r.get(item, "search", p, str, "local")
    if mode not in SEARCH_MODES:
        raise r.error(f"{p}.search", f"{mode!r} is not one of {', '.join(SEARCH_MODES)}")
    if backend == "sqlite":
        if "dsn" in item or "dsn_env" in item:
            raise r.error(f"{p}.dsn", 'is for backend = "postgresql"')
        raw = r.get(item, "path", p, str, "")
        path = Path(raw).expanduser() if raw else data_dir / "catalogue.sqlite3"
        if not path.is_absolute():
            path = r.root / path
    else:
        for key in ("path", "mmap_mib"):
            if key in item:
                raise r.error(f"{p}.{key}", 'is for backend = "sqlite"')
        dsn = r.get(item, "dsn", p, str, None)
        env = r.get(item, "dsn_env", p, str, None)
        if (dsn is None) == (env is None):
            raise r.error(f"{p}.dsn", "give dsn or dsn_env (one of them) for PostgreSQL")
        if env is not None:
            dsn = os.environ.get(env)
            if not dsn:
                raise r.error(f"{p}.dsn_env", f"the environment variable {env} is not set")
        if "password=" in dsn.replace(" ", "") and "dsn" in item:
            raise r.error(f"{p}.dsn", "holds a password: use ~/.pgpass, PGPASSWORD or dsn_env")
        if mode == "local":
            search_index = data_dir / "search-index.sqlite3"
            if not search_index.is_absolute():
                search_index = r.root / search_index

    def bounded(key: str, default: int, lo: int, hi: int) -> int:
        value = r.get(item, key, p, int, default)
        if not lo <= value <= hi:
            raise r.error(f"{p}.{key}", f"{value} is outside {lo}..{hi}")
        return value

    def seconds(key: str, default: float, lo: float, hi: float) -> float:
        value = r.get(item, key, p, float, default)
        if not lo <= value <= hi:  # NaN too
            raise r.error(f"{p}.{key}", f"{value} is outside {lo:g}..{hi:g} seconds")
        return float(value)

    base = r.positive(item, "backoff_base_seconds", p, 5.0)
    cap = r.positive(item, "backoff_cap_seconds", p, 3600.0)
    if cap < base:
        raise r.error(f"{p}.backoff_cap_seconds", "is below backoff_base_seconds")
    return CatalogueConfig(
        backend=backend, path=path, dsn=dsn, search_index=search_index,
        pool_size=bounded("pool_size", 4, 1, 64),
        mmap_mib=bounded("mmap_mib", 1024, 0, 1024 * 1024),
        connect_timeout_s=r.positive(item, "connect_timeout_seconds", p, 5.0),
        statement_timeout_ms=bounded("statement_timeout_ms", 2000, 10, 600_000),
        search_wait_s=seconds("search_wait_seconds", 1.0, 0.01, 60.0),
        search_retry_s=seconds("search_retry_seconds", 5.0, 0.1, 3600.0),
        search_stale_max_s=seconds("search_stale_max_seconds", 3600.0, 0.0, 30 * 86400.0),
        search=SearchLimits(max_query_chars=bounded("max_query_chars", 200, 10, 2000),
                            max_terms=bounded("max_terms", 8, 1, 32),
                            max_page_size=bounded("max_page_size", 100, 1, 1000),
                            max_offset=bounded("max_offset", 1000, 0, 100_000),
                            exact_total_max=bounded("exact_total_max", 200, 1, 100_000)),
        job_max_attempts=bounded("job_max_attempts", 5, 1, 100),
        job_lease_s=r.positive(item, "job_lease_seconds", p, 60.0),
        backoff=Backoff(base_s=base, cap_s=cap))
