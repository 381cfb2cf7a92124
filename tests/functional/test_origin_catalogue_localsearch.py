"""PostgreSQL's local search index (origin/catalogue/localsearch.py) on a real PostgreSQL server:
two catalogue objects on one database stand for two origin hosts, each with its own index file.

A publish is found by the next search on either host, a withdrawal never shows again (even in
the race where it commits between a search's read of the feed head and its hits); a deleted or
corrupt file is rebuilt; an index far behind answers from PostgreSQL meanwhile; concurrent
writers leave no gap in the feed a reader could skip.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from headwater.origin.catalogue import (CatalogueConfig, SearchQuery, TitleDraft, TitleState, open_catalogue)
from headwater.origin.catalogue import localsearch, postgres

from .catalogue_seed import NAMED, generated
from .postgres_server import find_initdb, start_postgres, stop_immediately

_schemas = itertools.count()


@pytest.fixture(scope="module")
def server():
    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    s = start_postgres()
    yield s
    s.stop()


@pytest.fixture
def database(server):
    """A DSN of a fresh schema of the test server."""
    schema = f"ls{next(_schemas)}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return server.dsn(options=f"-csearch_path={schema}")


@pytest.fixture
def no_poll(monkeypatch):
    """The background worker builds the index but never polls the feed: what a search finds
    it applied itself."""
    monkeypatch.setattr(localsearch, "POLL_S", 3600.0)


def _host(dsn: str, index: Path | None):
    return open_catalogue(CatalogueConfig(backend="postgresql", dsn=dsn, search_index=index))


def _publish(cat, title: str, **kw) -> int:
    t = cat.create_title(TitleDraft(title=title, **kw))
    for s in (TitleState.TRANSCODING, TitleState.PACKAGED, TitleState.PUBLISHED):
        cat.set_state(t.id, s)
    return t.id


def _ids(page) -> list[int]:
    return [h.id for h in page.hits]


@pytest.fixture
def database_search_refused(monkeypatch):
    """PostgreSQL's own ranking raises: a search that answers came from the local index."""
    def refused(*a, **kw):
        raise AssertionError("searched in PostgreSQL, not the local index")
    monkeypatch.setattr(postgres.PostgresCatalogue, "_match", refused)


def test_two_hosts_each_find_the_others_publish_at_once(database, tmp_path, no_poll, database_search_refused):
    a, b = _host(database, tmp_path / "a.sqlite3"), _host(database, tmp_path / "b.sqlite3")
    with a, b:
        a.import_titles(generated(200) + NAMED, state=TitleState.PUBLISHED)
        assert a.search_index.wait_ready(60) and b.search_index.wait_ready(60)
        assert a.search(SearchQuery(q="night train")).hits[0].title == "Night Train"
        for writer, reader in ((a, b), (b, a), (a, a)):
            word = f"zorblat{writer is a}{reader is a}"
            new = _publish(writer, f"The {word} Affair", category="drama", year=2026)
            page = reader.search(SearchQuery(q=word, with_total=True))
            assert _ids(page) == [new] and page.total == 1
            assert page.hits[0].title == f"The {word} Affair" and page.hits[0].category == "drama"
        # A metadata change follows too (the old words gone, the new found).
        a.update_metadata(new, TitleDraft(title="Quimbly Stations", category="comedy"))
        assert b.search(SearchQuery(q="zorblatTrueTrue")).hits == ()
        assert _ids(b.search(SearchQuery(q="quimbly", category="comedy"))) == [new]
        assert b.search(SearchQuery(q="quimbyl")).corrections == {"quimbyl": "quimbly"}


def test_a_withdrawn_title_is_never_shown(database, tmp_path, no_poll):
    a, b = _host(database, tmp_path / "a.sqlite3"), _host(database, tmp_path / "b.sqlite3")
    with a, b:
        ids = [_publish(a, f"Velvet Harbour {n}") for n in range(12)]
        assert b.search_index.wait_ready(60)
        assert sorted(_ids(b.search(SearchQuery(q="velvet harbour", limit=50)))) == ids
        gone: set[int] = set()
        for title_id in ids[:6]:
            a.set_state(title_id, TitleState.WITHDRAWN)
            gone.add(title_id)
            for host in (b, a):
                shown = set(_ids(host.search(SearchQuery(q="velvet", limit=50))))
                assert not shown & gone and shown == set(ids) - gone


def test_a_withdrawal_racing_a_search_is_not_shown(database, tmp_path, no_poll, monkeypatch):
    """The withdrawal commits after the search read the feed's head and before its hits are
    checked: the index then still holds the title, PostgreSQL's rows do not show it."""
    a, b = _host(database, tmp_path / "a.sqlite3"), _host(database, tmp_path / "b.sqlite3")
    with a, b:
        ids = [_publish(a, f"Copper Lantern {n}") for n in range(3)]
        assert b.search_index.wait_ready(60)
        real = localsearch.LocalSearchIndex._local_search
        raced = []

        def racing(self, query):
            if not raced:
                raced.append(ids[0])
                a.set_state(ids[0], TitleState.WITHDRAWN)
            return real(self, query)

        monkeypatch.setattr(localsearch.LocalSearchIndex, "_local_search", racing)
        page = b.search(SearchQuery(q="copper lantern"))
        assert raced and sorted(_ids(page)) == ids[1:]
        assert b.search_index.position > 0  # it caught up, then searched again


def test_an_index_far_behind_answers_from_postgresql_meanwhile(database, tmp_path, no_poll, monkeypatch):
    a = _host(database, tmp_path / "a.sqlite3")
    with a:
        a.import_titles(generated(50), state=TitleState.PUBLISHED)
        assert a.search_index.wait_ready(60)
        monkeypatch.setattr(localsearch, "CATCH_UP_IN_SEARCH_MAX", 2)
        new = [_publish(a, f"Amber Quay {n}") for n in range(4)]
        before = a.search_index.position
        assert sorted(_ids(a.search(SearchQuery(q="amber quay")))) == new  # PostgreSQL's answer
        a.search_index.run_once()  # what the worker does next
        assert a.search_index.position > before
        monkeypatch.setattr(postgres.PostgresCatalogue, "_match", None)  # the index answers now
        assert sorted(_ids(a.search(SearchQuery(q="amber quay")))) == new


@pytest.mark.parametrize("damage", ["deleted", "corrupt", "unfinished"])
def test_a_damaged_local_file_is_rebuilt_at_start(database, tmp_path, damage):
    path = tmp_path / "a.sqlite3"
    a = _host(database, path)
    with a:
        a.import_titles(generated(100) + NAMED, state=TitleState.PUBLISHED)
        assert a.search_index.wait_ready(60) and a.search_index.rebuilds == 1
        expected = a.search(SearchQuery(q="night trian", with_total=True))
        assert expected.hits[0].title == "Night Train"
    if damage == "deleted":
        path.unlink()
    elif damage == "corrupt":
        for p in tmp_path.glob("a.sqlite3*"):
            p.write_bytes(b"not a database" * 1000)
    else:  # a build cut short (its last step marks the file complete)
        import sqlite3
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM local_feed WHERE name = 'complete'")
    a = _host(database, path)
    with a:
        assert a.search(SearchQuery(q="night trian", with_total=True)) == expected  # PostgreSQL meanwhile
        assert a.search_index.wait_ready(60) and a.search_index.rebuilds == 1
        assert a.search(SearchQuery(q="night trian", with_total=True)) == expected
    # A whole file is kept: the next start opens it as it is.
    a = _host(database, path)
    with a:
        a.warm_search()
        assert a.search_index.ready and a.search_index.rebuilds == 0


def test_a_file_of_another_database_is_rebuilt(database, server, tmp_path):
    path = tmp_path / "a.sqlite3"
    with _host(database, path) as a:
        _publish(a, "Old Database Title")
        assert a.search_index.wait_ready(60)
    other = f"ls{next(_schemas)}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {other}")
    with _host(server.dsn(options=f"-csearch_path={other}"), path) as b:
        _publish(b, "New Database Title")
        assert b.search_index.wait_ready(60) and b.search_index.rebuilds == 1
        assert [h.title for h in b.search(SearchQuery(q="database title")).hits] == ["New Database Title"]


def test_concurrent_writers_leave_no_gap_in_the_feed(database):
    """Writers on two hosts append to the feed at once, each holding its transaction open a while
    after its row (a slow commit); a reader reading "seq > last" as it goes must meet every row.
    (The feed's own append, as every search change makes it: a publish today also updates the
    document count's row, which orders writers too, but the feed must not rely on that.)"""
    hosts = [_host(database, None) for _ in range(2)]
    rng = random.Random(7)
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        with psycopg.connect(database, autocommit=True) as conn:
            last = 0
            while True:
                finished = done.is_set()
                rows = conn.execute("SELECT seq FROM search_feed WHERE seq > %s ORDER BY seq", (last,)).fetchall()
                seen.extend(r[0] for r in rows)
                last = rows[-1][0] if rows else last
                if finished:
                    return

    def write(worker: int) -> None:
        host = hosts[worker % 2]
        for n in range(8):
            with host._tx(write=True) as tx:
                host._search_changed(tx, [worker * 100 + n])
                time.sleep(rng.random() * 0.02)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    for h in hosts:
        h.close()
    with psycopg.connect(database, autocommit=True) as conn:
        every = [r[0] for r in conn.execute("SELECT seq FROM search_feed ORDER BY seq").fetchall()]
    assert len(every) == 32
    assert seen == every  # read in order as it went, none skipped


def test_a_second_user_of_the_file_searches_postgresql(database, tmp_path, no_poll):
    """One index file, one user: a second catalogue (another process on the same data dir) does
    not touch the first one's file and searches in PostgreSQL."""
    path = tmp_path / "a.sqlite3"
    with _host(database, path) as a, _host(database, path) as b:
        new = _publish(a, "Shared Lantern")
        assert a.search_index.wait_ready(60) and not b.search_index.wait_ready(1)
        assert _ids(b.search(SearchQuery(q="shared lantern"))) == [new]
        assert _ids(a.search(SearchQuery(q="shared lantern"))) == [new]
        assert a.search_index.rebuilds == 1 and b.search_index.rebuilds == 0


def test_a_file_behind_a_pruned_feed_is_rebuilt(database, tmp_path, no_poll, monkeypatch):
    """The feed keeps its last FEED_KEEP_ROWS changes (pruned on every FEED_PRUNE_EVERY-th
    append): a host whose file missed pruned changes answers from PostgreSQL and rebuilds, never
    from a file that lacks them."""
    path = tmp_path / "b.sqlite3"
    with _host(database, path) as b:
        _publish(b, "Before The Gap")
        assert b.search_index.wait_ready(60)
    monkeypatch.setattr(postgres, "FEED_PRUNE_EVERY", 1)
    monkeypatch.setattr(postgres, "FEED_KEEP_ROWS", 1)
    with open_catalogue(CatalogueConfig(backend="postgresql", dsn=database)) as a:
        missed = _publish(a, "Across The Gap")
        _publish(a, "After The Gap")  # prunes the rows before it
    with psycopg.connect(database, autocommit=True) as conn:
        assert conn.execute("SELECT pruned_to FROM search_feed_epoch").fetchone()[0] > 1
    with _host(database, path) as b:
        b.warm_search()
        assert b.search_index.ready and b.search_index.rebuilds == 0  # whole, but behind the prune
        assert missed in _ids(b.search(SearchQuery(q="gap", limit=10)))  # from PostgreSQL
        deadline = time.monotonic() + 60
        while b.search_index.rebuilds == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.search_index.wait_ready(60) and b.search_index.rebuilds == 1
        monkeypatch.setattr(postgres.PostgresCatalogue, "_match", None)  # the file answers now
        assert {h.title for h in b.search(SearchQuery(q="gap", limit=10)).hits} == {
            "Before The Gap", "Across The Gap", "After The Gap"}


def test_a_host_with_a_clock_far_ahead_prunes_nothing_unread(database, tmp_path, no_poll, monkeypatch):
    """The feed is pruned by sequence, not by a host's clock: a host whose clock runs a year
    ahead appends (and prunes) without taking changes from a host that has not read them."""
    from headwater.clock import FakeClock

    path = tmp_path / "b.sqlite3"
    with _host(database, path) as b:
        _publish(b, "Before The Skew")
        assert b.search_index.wait_ready(60)
        position, rebuilds = b.search_index.position, b.search_index.rebuilds
        monkeypatch.setattr(postgres, "FEED_PRUNE_EVERY", 1)
        clock = FakeClock(start=time.time() + 365 * 86400)
        with open_catalogue(CatalogueConfig(backend="postgresql", dsn=database), clock=clock) as a:
            skewed = [_publish(a, f"Skewed Clock {n}") for n in range(3)]
        with psycopg.connect(database, autocommit=True) as conn:
            assert conn.execute("SELECT pruned_to FROM search_feed_epoch").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM search_feed WHERE seq > %s", (position,)).fetchone()[0] >= 3
        b.search_index.run_once()  # caught up, not rebuilt
        assert b.search_index.rebuilds == rebuilds and b.search_index.position > position
        monkeypatch.setattr(postgres.PostgresCatalogue, "_match", None)  # the file answers
        assert sorted(_ids(b.search(SearchQuery(q="skewed clock")))) == skewed


def test_the_database_down_the_index_answers_alone_within_its_bound(tmp_path, no_poll, monkeypatch):
    """PostgreSQL stopped (``pg_ctl stop -m immediate``) under a catalogue on a fake clock: the
    index answers alone, marked with its age; the database is tried once per
    search_retry_s, not per search; past search_stale_max_s, SearchUnavailable; the database
    back, the next probe finds it and searches are current again."""
    import shutil
    import tempfile

    from headwater.bench.postgres_server import start_postgres as start_kept
    from headwater.clock import FakeClock
    from headwater.origin.catalogue import SearchUnavailable
    from tests.cluster import free_ports

    root = Path(tempfile.mkdtemp(prefix="hw-pg-down-"))
    # Commits durable before they are acknowledged (the test server's default is not): an
    # immediate stop then loses none, as on a production server.
    durable = {"synchronous_commit": "on"}
    pg = start_kept(port=free_ports(1)[0], data_dir=root, settings=durable)
    clock = FakeClock()
    config = CatalogueConfig(backend="postgresql", dsn=pg.dsn(), search_index=tmp_path / "a.sqlite3",
                             search_wait_s=0.5, search_retry_s=10.0, search_stale_max_s=60.0)
    tried = []
    real = localsearch.LocalSearchIndex._head_and_rows

    def counted(self, ids):
        tried.append(clock.monotonic())
        return real(self, ids)

    monkeypatch.setattr(localsearch.LocalSearchIndex, "_head_and_rows", counted)
    try:
        with open_catalogue(config, clock=clock) as a:
            ids = [_publish(a, f"Granite Ferry {n}") for n in range(3)]
            assert a.search_index.wait_ready(60)
            fresh = a.search(SearchQuery(q="granite ferry", with_total=True))
            assert sorted(_ids(fresh)) == ids and fresh.stale_s is None
            a.set_state(ids[0], TitleState.WITHDRAWN)
            fresh = a.search(SearchQuery(q="granite ferry", with_total=True))
            assert sorted(_ids(fresh)) == ids[1:]
            stop_immediately(pg)
            del tried[:]
            clock.advance(3)
            for _ in range(20):
                page = a.search(SearchQuery(q="granite ferry", with_total=True))
                assert page == replace(fresh, stale_s=3.0)
            assert len(tried) == 1  # the first search's bounded wait, then the breaker
            clock.advance(10)
            assert a.search(SearchQuery(q="granite", with_total=True)).stale_s == 13.0
            assert len(tried) == 2  # one probe per interval
            clock.advance(47)
            assert a.search(SearchQuery(q="granite")).stale_s == 60.0  # at the bound: still answers
            assert len(tried) == 3
            clock.advance(1)
            with pytest.raises(SearchUnavailable, match="61 s old"):
                a.search(SearchQuery(q="granite"))
            restarted = start_kept(port=pg.port, data_dir=root, settings=durable)
            try:
                clock.advance(10)  # the next probe
                deadline = time.monotonic() + 30
                while True:  # the pool reconnects in the background: a probe may still fail
                    try:
                        page = a.search(SearchQuery(q="granite ferry", with_total=True))
                        if page.stale_s is None:
                            break
                    except SearchUnavailable:
                        pass
                    assert time.monotonic() < deadline
                    clock.advance(10)
                    time.sleep(0.2)
                assert page == fresh
            finally:
                restarted.stop()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_pool_taken_past_the_wait_answers_from_the_index(database, tmp_path, no_poll):
    """Every connection of the pool busy (here: held by the test) past search_wait_s: the
    search answers from the index, marked stale, after that one wait; the next search does not
    wait at all (the breaker); a connection free again and the interval passed, fresh."""
    from headwater.clock import FakeClock

    clock = FakeClock()
    config = CatalogueConfig(backend="postgresql", dsn=database, search_index=tmp_path / "a.sqlite3",
                             pool_size=1, search_wait_s=1.0, search_retry_s=5.0)
    with open_catalogue(config, clock=clock) as a:
        ids = [_publish(a, f"Saffron Viaduct {n}") for n in range(2)]
        assert a.search_index.wait_ready(60)
        fresh = a.search(SearchQuery(q="saffron viaduct"))
        assert sorted(_ids(fresh)) == ids and fresh.stale_s is None
        with a._pool.connection():
            t0 = time.monotonic()
            page = a.search(SearchQuery(q="saffron viaduct"))
            waited = time.monotonic() - t0
            assert page == replace(fresh, stale_s=0.0) and 0.95 < waited < 5
            t0 = time.monotonic()
            assert a.search(SearchQuery(q="saffron")).stale_s == 0.0
            assert time.monotonic() - t0 < 0.8  # not the 1 s wait again (margin for a loaded machine)
        clock.advance(5)
        assert a.search(SearchQuery(q="saffron viaduct")) == fresh


def _processes(root: int) -> list[int]:
    """``root`` and its descendants."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_database_that_stops_answering_costs_a_search_one_bounded_wait(tmp_path, no_poll):
    """The server's processes stopped (SIGSTOP: its kernel still acknowledges, so no TCP
    timeout or keepalive fires and statement_timeout, the server's own timer, never runs): the
    search's statement is cut client-side after search_wait_s and the index answers alone;
    the server resumed, searches are current again."""
    import os
    import signal

    from headwater.clock import FakeClock

    pg = start_postgres()
    clock = FakeClock()
    config = CatalogueConfig(backend="postgresql", dsn=pg.dsn(), search_index=tmp_path / "a.sqlite3",
                             search_wait_s=0.5, search_retry_s=10.0)
    try:
        with open_catalogue(config, clock=clock) as a:
            ids = [_publish(a, f"Cobalt Lighthouse {n}") for n in range(3)]
            assert a.search_index.wait_ready(60)
            query = SearchQuery(q="cobalt lighthouse", with_total=True)
            fresh = a.search(query)
            assert sorted(_ids(fresh)) == ids and fresh.stale_s is None
            stopped = _processes(pg.proc.pid)  # each backend leads a process group of its own
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            try:
                answered: list = []
                t0 = time.monotonic()
                searching = threading.Thread(target=lambda: answered.append(a.search(query)), daemon=True)
                searching.start()
                searching.join(20)
                took = time.monotonic() - t0
                assert answered == [replace(fresh, stale_s=0.0)], "the search waited on the stopped server"
                assert took < 5 and a._watchdog.cut == 1
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
            deadline = time.monotonic() + 30
            while (page := a.search(query)).stale_s is not None:
                assert time.monotonic() < deadline
                clock.advance(10)  # the next probe
                time.sleep(0.1)
            assert page == fresh
    finally:
        pg.stop()


def test_a_bulk_import_refreshes_the_planners_statistics(database, monkeypatch):
    """An import of ANALYZE_AFTER_IMPORT titles or more ends with an ANALYZE of the tables it
    wrote (searches right after a bulk import otherwise ran on the planner's picture of the
    empty tables, seconds each, until autovacuum came); a small one leaves that to autovacuum."""
    monkeypatch.setattr(postgres, "ANALYZE_AFTER_IMPORT", 50)

    def analysed(cat) -> dict[str, int]:
        with cat._tx(write=False) as tx:
            return dict(tx.rows("SELECT relname, analyze_count FROM pg_stat_user_tables "
                                "WHERE schemaname = current_schema()"))

    with _host(database, None) as cat:
        before = analysed(cat)
        cat.import_titles([TitleDraft(title=f"Cobalt Orchard {n}") for n in range(10)], state=TitleState.PUBLISHED)
        assert analysed(cat) == before
        cat.import_titles([TitleDraft(title=f"Cobalt Orchard {n}") for n in range(60)], state=TitleState.PUBLISHED)
        after = analysed(cat)
        for table in postgres._IMPORTED_TABLES:
            assert after[table] == before.get(table, 0) + 1, table
        assert after["jobs"] == before.get("jobs", 0)  # only what the import wrote


def test_a_start_while_the_database_is_down_answers_from_the_kept_file_by_its_recorded_age(database, tmp_path):
    """origindb: a catalogue made while PostgreSQL cannot be reached (a port nothing listens on)
    opens the index file a previous run left, and answers from it alone, stale by the time the
    file recorded (``synced_at``, written at close), on a fake clock; past
    search_stale_max_s, SearchUnavailable; a write answers BackendUnavailable at once. A file
    that recorded no time cannot tell its age: SearchUnavailable."""
    import sqlite3

    from headwater.clock import FakeClock
    from headwater.origin.catalogue import BackendUnavailable, SearchUnavailable
    from tests.cluster import free_ports

    clock = FakeClock()
    path = tmp_path / "a.sqlite3"
    config = CatalogueConfig(backend="postgresql", dsn=database, search_index=path, search_stale_max_s=600.0)
    with open_catalogue(config, clock=clock) as a:
        ids = [_publish(a, f"Basalt Lighthouse {n}") for n in range(3)]
        assert a.search_index.wait_ready(60)
        fresh = a.search(SearchQuery(q="basalt lighthouse", with_total=True))
        assert sorted(_ids(fresh)) == ids and fresh.stale_s is None
    clock.advance(100)
    down = replace(config, dsn=f"postgresql://postgres@127.0.0.1:{free_ports(1)[0]}/postgres")
    with open_catalogue(down, clock=clock) as b:
        assert not b.database_available
        page = b.search(SearchQuery(q="basalt lighthouse", with_total=True))
        assert page == replace(fresh, stale_s=100.0)
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable):
            b.create_title(TitleDraft(title="Written While Down"))
        assert time.monotonic() - t0 < 2
        clock.advance(500)
        assert b.search(SearchQuery(q="basalt")).stale_s == 600.0
        clock.advance(1)
        with pytest.raises(SearchUnavailable, match="601 s old"):
            b.search(SearchQuery(q="basalt"))
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM local_feed WHERE name = 'synced_at'")
    with open_catalogue(down, clock=clock) as c:
        with pytest.raises(SearchUnavailable, match="not known to be current"):
            c.search(SearchQuery(q="basalt"))


def test_a_frozen_database_does_not_hold_the_index_worker_or_the_shutdown(tmp_path):
    """The server's processes stopped (SIGSTOP) while the index's worker polls the feed: its
    statement is cut client-side after statement_timeout_ms + search_wait_s (the catch-up's and
    rebuild's bound), so closing the catalogue (an origin's shutdown) returns within seconds
    instead of waiting on the frozen server for ever."""
    import os
    import signal

    pg = start_postgres()
    config = CatalogueConfig(backend="postgresql", dsn=pg.dsn(), search_index=tmp_path / "a.sqlite3",
                             search_wait_s=0.5, statement_timeout_ms=1000)
    stopped: list[int] = []
    try:
        a = open_catalogue(config)
        _publish(a, "Frozen Harbour")
        assert a.search_index.wait_ready(60)
        stopped = _processes(pg.proc.pid)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(localsearch.POLL_S * 2)  # the worker's next poll is now waiting on the server
        closed = threading.Event()
        t0 = time.monotonic()
        closing = threading.Thread(target=lambda: (a.close(), closed.set()), daemon=True)
        closing.start()
        closed.wait(20)
        took = time.monotonic() - t0
        assert closed.is_set() and took < 10, f"close waited {took:.1f} s on the frozen server"
        assert a._watchdog.cut >= 1
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        pg.stop()
