"""The catalogue's record of version prefixes to delete (catalogue/versions.py), on both backends
(SQLite in a file, a real PostgreSQL server), on a fake clock.

A publish that replaces a title's renditions records the version it leaves (since the publish),
never the one it names; the lease taking over a dead attempt's job records that attempt's prefix
in the same transaction, as does the lease that finds a job dead on its last attempt and a
recorded failure. The sweep's claim hands out only records past the retention, one sweeper at a
time, drops the record of a prefix the title names again, skips an attempt holding a live lease,
and a record is removed only by the sweeper holding its claim. The object-store side (the
collector deleting the objects) is tested on real daemons in test_origin_transcode.py.
"""

from __future__ import annotations

import random
import threading

import pytest

from headwater.clock import FakeClock
from headwater.origin.catalogue import JobState, LeaseLost, Rendition, TitleDraft, TitleState, open_catalogue
from headwater.origin.catalogue.backoff import Backoff
from headwater.origin.catalogue.versions import attempt_prefix, parse_version_prefix, version_folder

from .test_origin_catalogue import _config, postgres  # noqa: F401 - the session's PostgreSQL server

KIND = "transcode"


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request, tmp_path):
    pg = request.getfixturevalue("postgres") if request.param != "sqlite" else None
    clock = FakeClock()
    cat = open_catalogue(_config(request.param, pg, tmp_path, backoff=Backoff(base_s=10, cap_s=100),
                                 job_max_attempts=3), clock=clock, rng=random.Random(1))
    yield cat, clock
    cat.close()


def renditions(prefix: str) -> list[Rendition]:
    return [Rendition(name="dash", codec="manifest", path=prefix + "manifest.mpd"),
            Rendition(name="hls", codec="manifest", path=prefix + "master.m3u8"),
            Rendition(name="180p", codec="avc1.64000d", width=320, height=180, path=prefix + "video-1/media.m3u8")]


def publish(cat, title_id: int, worker: str = "w"):
    """Lease the title's job and publish it under its attempt's prefix; the prefix."""
    lease = cat.lease(worker, [KIND], 30, fail_titles=True, attempt_prefix=attempt_prefix)
    assert lease is not None and lease.job.title_id == title_id
    prefix = attempt_prefix(title_id, lease.job.id, lease.job.attempts)
    cat.move_title(lease, TitleState.TRANSCODING)
    cat.move_title(lease, TitleState.PACKAGED)
    cat.complete(lease, title_state=TitleState.PUBLISHED, renditions=renditions(prefix))
    return prefix


def retired(cat) -> dict[str, tuple[str, float]]:
    return {r.prefix: (r.reason, r.since) for r in cat.retired_versions()}


def test_prefixes_are_parsed_strictly():
    assert parse_version_prefix("titles/12/v7-2/") == (12, 7, 2)
    assert parse_version_prefix("titles/12/v7/") == (12, 7, None)
    for bad in ("titles/12/", "titles/12/v7-2", "titles/12/v7-2/x/", "titles/012/v7/", "titles/12/v0/",
                "titles/12/v7-2/../", "x/titles/12/v7/", "titles/12/v7-2//", "titles/-1/v7/"):
        assert parse_version_prefix(bad) is None, bad
    assert version_folder(12, "titles/12/v7-2/manifest.mpd") == "titles/12/v7-2/"
    assert version_folder(13, "titles/12/v7-2/manifest.mpd") is None  # another title's
    assert version_folder(12, "titles/12/v7-2/") is None and version_folder(12, "elsewhere/x") is None


def test_a_republish_retires_the_earlier_version_and_never_the_published_one(fresh):
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Night Train", upload="u1", owner="o"))
    other = cat.create_title(TitleDraft(title="Day Bus", upload="u2", owner="o"))
    cat.enqueue(KIND, "first", title_id=t.id)
    first = publish(cat, t.id)
    assert retired(cat) == {}  # a first publish replaces nothing
    cat.enqueue(KIND, "other", title_id=other.id)
    publish(cat, other.id)
    clock.advance(5)
    cat.set_state(t.id, TitleState.WITHDRAWN)
    assert retired(cat) == {}  # withdrawn: it may be published again as it is
    cat.retry_title(t.id, KIND, payload={})
    assert retired(cat) == {}  # nothing replaced until the new version is published
    clock.advance(5)
    second = publish(cat, t.id)
    assert second != first
    assert retired(cat) == {first: ("superseded", clock.time())}  # since the publish replacing it
    # Published again with the first version's renditions (an operator's rollback): its record
    # goes in the same transaction, and the second version is the one to delete.
    cat.set_state(t.id, TitleState.WITHDRAWN)
    cat.set_state(t.id, TitleState.PUBLISHED, renditions=renditions(first))
    assert set(retired(cat)) == {second}


def test_a_dead_attempts_prefix_is_recorded_by_the_lease_that_takes_over(fresh):
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Killed", upload="u1", owner="o"))
    job = cat.enqueue(KIND, "killed", title_id=t.id)
    dead = cat.lease("a", [KIND], 10, fail_titles=True, attempt_prefix=attempt_prefix)
    clock.advance(5)
    assert cat.lease("b", [KIND], 10, fail_titles=True, attempt_prefix=attempt_prefix) is None  # still held
    assert retired(cat) == {}
    clock.advance(6)
    taken = cat.lease("b", [KIND], 10, fail_titles=True, attempt_prefix=attempt_prefix)
    assert taken.job.id == dead.job.id and taken.job.attempts == 2
    assert retired(cat) == {attempt_prefix(t.id, job.id, 1): ("dead", clock.time())}
    # Without attempt_prefix (another kind's worker) nothing is recorded.
    cat.enqueue("probe", "p", title_id=t.id)
    cat.lease("c", ["probe"], 10)
    clock.advance(11)
    # The transcode job dies on its last attempt: attempts 2 and 3 are recorded too.
    cat.lease("c", ["probe"], 10)
    assert cat.lease("b", [KIND], 10, fail_titles=True, attempt_prefix=attempt_prefix).job.attempts == 3
    clock.advance(11)
    assert cat.lease("b", [KIND], 10, fail_titles=True, attempt_prefix=attempt_prefix) is None
    assert cat.get_job(job.id).state is JobState.FAILED
    assert set(retired(cat)) == {attempt_prefix(t.id, job.id, n) for n in (1, 2, 3)}


def test_a_failed_attempt_is_recorded_with_its_failure_and_not_by_a_fenced_out_worker(fresh):
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Flaky", upload="u1", owner="o"))
    job = cat.enqueue(KIND, "flaky", title_id=t.id)
    lease = cat.lease("w", [KIND], 30, attempt_prefix=attempt_prefix)
    mine = attempt_prefix(t.id, job.id, 1)
    assert cat.fail(lease, "store down", move_title=True, retire_prefix=mine).state is JobState.QUEUED
    assert retired(cat) == {mine: ("failed", clock.time())}
    with pytest.raises(LeaseLost):  # fenced: nothing of it is written
        cat.fail(lease, "late", retire_prefix=attempt_prefix(t.id, job.id, 9))
    assert set(retired(cat)) == {mine}
    clock.advance(20)
    lease = cat.lease("w", [KIND], 30, attempt_prefix=attempt_prefix)
    with pytest.raises(ValueError):  # never a folder that is not a version's: the failure rolls back
        cat.fail(lease, "x", retire_prefix=f"titles/{t.id}/")
    assert set(retired(cat)) == {mine} and cat.get_job(job.id).state is JobState.LEASED


def test_the_claim_hands_out_due_prefixes_once_and_never_a_live_or_published_one(fresh):
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Night Train", upload="u1", owner="o"))
    job = cat.enqueue(KIND, "night", title_id=t.id)
    first = cat.lease("a", [KIND], 10, fail_titles=True, attempt_prefix=attempt_prefix)
    clock.advance(11)
    second = cat.lease("b", [KIND], 100_000, fail_titles=True, attempt_prefix=attempt_prefix)
    dead = attempt_prefix(t.id, job.id, 1)
    assert set(retired(cat)) == {dead} and first.job.id == second.job.id
    retention = 3600
    assert cat.claim_retired_versions("s1", retired_before=clock.time() - retention, claim_s=60) == []
    clock.advance(retention)
    (got,) = cat.claim_retired_versions("s1", retired_before=clock.time() - retention, claim_s=60)
    assert (got.prefix, got.title_id, got.job_id, got.attempt, got.reason) == (dead, t.id, job.id, 1, "dead")
    assert cat.claim_retired_versions("s2", retired_before=clock.time(), claim_s=60) == []  # s1 holds it
    assert not cat.forget_retired_version(dead, "s2")  # only the claimer removes the record
    clock.advance(61)  # s1's claim lapsed (it died): s2 takes it over
    (again,) = cat.claim_retired_versions("s2", retired_before=clock.time(), claim_s=60)
    assert again.prefix == dead
    assert not cat.forget_retired_version(dead, "s1") and cat.forget_retired_version(dead, "s2")
    assert retired(cat) == {}

    # A record naming an attempt that holds a live lease (written by hand: the catalogue never
    # retires a live attempt) is skipped, and a published prefix's record dropped.
    live = attempt_prefix(t.id, job.id, 2)
    with cat.transaction(write=True) as tx:
        tx.run("INSERT INTO retired_versions (prefix, title_id, job_id, attempt, reason, since) "
               "VALUES (?, ?, ?, ?, 'dead', 0)", (live, t.id, job.id, 2))
    assert cat.claim_retired_versions("s1", retired_before=clock.time(), claim_s=60) == []
    cat.move_title(second, TitleState.TRANSCODING)
    cat.move_title(second, TitleState.PACKAGED)
    cat.complete(second, title_state=TitleState.PUBLISHED, renditions=renditions(live))
    assert retired(cat) == {}  # the publish naming it dropped its record
    with cat.transaction(write=True) as tx:
        tx.run("INSERT INTO retired_versions (prefix, title_id, job_id, attempt, reason, since) "
               "VALUES (?, ?, ?, ?, 'dead', 0)", (live, t.id, job.id, 2))
    clock.advance(200)
    assert cat.claim_retired_versions("s1", retired_before=clock.time(), claim_s=60) == []
    assert retired(cat) == {}  # published: the claim dropped it


def test_racing_sweepers_claim_each_prefix_once(fresh):
    """Eight threads with their own connections claim from 40 due prefixes, two at a time:
    every prefix is handed out exactly once."""
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Many", upload="u1", owner="o"))
    with cat.transaction(write=True) as tx:
        for n in range(1, 41):
            tx.run("INSERT INTO retired_versions (prefix, title_id, job_id, attempt, reason, since) "
                   "VALUES (?, ?, ?, ?, 'superseded', 0)", (attempt_prefix(t.id, n, 1), t.id, n, 1))
    got: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def sweep(name: str) -> None:
        other = open_catalogue(cat.config, clock=clock)
        try:
            while claimed := other.claim_retired_versions(name, retired_before=clock.time(), claim_s=600, limit=2):
                with lock:
                    got.extend(r.prefix for r in claimed)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            other.close()

    threads = [threading.Thread(target=sweep, args=(f"s{i}",)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert sorted(got) == sorted(attempt_prefix(t.id, n, 1) for n in range(1, 41))
