"""Shared fixtures.

Kernel tests run on both anyio backends (asyncio on uvloop, and trio). End-to-end and probe
tests get one real cluster per test module: a module sets ``CLUSTER_OPTIONS = {...}`` (keyword
arguments of :class:`tests.cluster.Cluster`) for smaller stripes, a smaller minimum part size
and so on, and tests keep out of each other's way with the function-scoped ``bucket`` fixture
(a fresh bucket with a unique name per test).
"""

import itertools
import os
import re
import secrets

import pytest

from tests.cluster import TEST_SECRET_ENV, Cluster

os.environ.setdefault(TEST_SECRET_ENV, secrets.token_hex(32))


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request):
    return request.param


#: The longest files first (from ``--durations``), so that with ``make test``'s two xdist workers
#: (one file to a worker at a time) no long file starts last while the other worker sits idle.
LONGEST_FIRST = (
    "tests/functional/test_end_to_end.py",
    "tests/probe/test_metadata_faults.py", "tests/functional/test_s3_cli.py", "tests/probe/test_repair_faults.py",
    "tests/functional/test_metadata.py", "tests/functional/test_cli.py", "tests/probe/test_storage_faults.py",
    "tests/functional/test_s3_tls.py", "tests/functional/test_web_page.py", "tests/probe/test_consistency.py",
    "tests/probe/test_rebalance.py", "tests/functional/test_cli_cluster.py", "tests/functional/test_s3_boto3.py",
    "tests/functional/test_edge_workers.py", "tests/functional/test_s3_disconnect.py",
    "tests/functional/test_s3_handoff.py", "tests/functional/test_s3_large.py",
    "tests/functional/test_metadata_membership.py", "tests/functional/test_origin_transcode.py",
    "tests/functional/test_drm_playback.py", "tests/functional/test_monitoring.py",
    "tests/functional/test_s3_write_races.py", "tests/probe/test_hosts.py", "tests/functional/test_s3_compat.py",
    "tests/unit/test_raft_membership.py", "tests/functional/test_metadata_failover.py",
    "tests/probe/test_node_out.py", "tests/functional/test_origin_hostile.py",
)


def pytest_configure(config):
    """Under pytest-xdist each worker picks its free ports from its own slice of the range
    (``HEADWATER_PORT_RANGE``, read by ``headwater.bench.peers.free_ports``; the daemons and
    benches a test starts inherit it): a port one worker found free is then never taken by the
    other's daemon before its own daemon binds it."""
    from headwater.bench.peers import PORT_RANGE_ENV, _ephemeral_range

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1 and PORT_RANGE_ENV not in os.environ:
        lo, hi = 10000, _ephemeral_range()[0]
        span = (hi - lo) // count
        first = lo + int(worker[2:]) * span
        os.environ[PORT_RANGE_ENV] = f"{first}-{first + span}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A test marked ``heavy`` (a multi-second in-process cluster) runs on asyncio in ``make test``;
    its trio run is marked slow. Kernel and protocol tests keep both backends in ``make test``.
    The longest files go first (:data:`LONGEST_FIRST`); a file's tests stay together in order."""
    for item in items:
        if item.get_closest_marker("heavy") and "[trio" in item.nodeid:
            item.add_marker(pytest.mark.slow)
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


_counter = itertools.count()


def _cluster_fixture(request, tmp_path_factory):
    opts = dict(getattr(request.module, "CLUSTER_OPTIONS", {}))
    name = request.module.__name__.rsplit(".", 1)[-1]
    c = Cluster(tmp_path_factory.mktemp(name), **opts)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    yield from _cluster_fixture(request, tmp_path_factory)


@pytest.fixture(scope="module")
def s3(cluster):
    """boto3 client of the first user (alice)."""
    return cluster.s3_client(0)


@pytest.fixture(scope="module")
def s3_bob(cluster):
    """boto3 client of the second user (bob)."""
    return cluster.s3_client(1)


def unique_bucket_name(hint: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-") or "b"
    return f"{base}-{next(_counter)}"


@pytest.fixture
def bucket(request, s3):
    """A new, empty bucket owned by alice, named after the test."""
    name = unique_bucket_name(request.node.name.removeprefix("test_"))
    s3.create_bucket(Bucket=name)
    return name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    c = getattr(item, "funcargs", {}).get("cluster")
    if rep.failed and isinstance(c, Cluster):
        for n in ("s3", "up"):
            if (c.logs / f"{n}.log").exists():
                rep.sections.append((f"cluster log {n}", c.log_tail(n, 40)))
        rep.sections.append(("cluster root", str(c.root)))
