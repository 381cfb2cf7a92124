"""The upload service's leftovers on the real object store: the orphan sweep, and the records'
database off the event loop.

The upload service runs in this process (so its clock is a fake one the test sets) against the
cluster's real S3 gateway, in a bucket of its own. Covered: the objects a crash or a failed
delete leaves (a segment PUT whose record write never happened, the segments of an upload
removed while the store refused their delete, a multipart upload whose record's INSERT never
happened, written here as such a crash leaves them) are removed by the janitor's sweep once
older than the grace period, and counted; what must stay stays: a live upload's named segment
and multipart upload, a segment of an upload whose lease is held (a PATCH between its segment's
PUT and its record write), an orphan still inside the grace period, a key that is not the
service's; the live upload then completes with the right bytes; the listings are walked in
pages of two. On PostgreSQL: with the ``uploads`` table locked by another session (a database
that does not answer for 1.5 s), the start's ``recover()``, a HEAD's read and PATCHes wait in
worker threads while the event loop keeps ticking. Through a relay that loses one COMMIT
(commit_cutter.py): a segment whose record write committed unbeknown to the PATCH is kept (the
sweep's, had it not), and an upload the store completed whose record write was lost is
recorded complete when its client resumes.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

import anyio
import psycopg
import pytest

from headwater.clock import SYSTEM_CLOCK, FakeClock
from headwater.http import Headers
from headwater.http.client import HttpClient
from headwater.origin.catalogue import CatalogueConfig, open_catalogue
from headwater.origin.upload.janitor import UploadJanitor
from headwater.origin.upload import s3 as s3_module
from headwater.origin.upload.records import UploadRecords
from headwater.origin.upload.s3 import MultipartStore
from headwater.origin.upload.service import UploadService

from tests.bodies import MemoryBody

from .commit_cutter import CommitCutter
from .postgres_server import find_initdb, start_postgres

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB", min_part_size="5MiB")
MiB = 1024 * 1024
BUCKET = "uploads-orphans"
GRACE_S = 600.0


def creation(length: int) -> Headers:
    return Headers([("tus-resumable", "1.0.0"), ("upload-length", str(length))])


def patching(at: int, size: int) -> Headers:
    return Headers([("tus-resumable", "1.0.0"), ("upload-offset", str(at)),
                    ("content-type", "application/offset+octet-stream"), ("content-length", str(size))])


def make_service(cluster, records: UploadRecords, spool, clock, **kw) -> tuple[HttpClient, UploadService]:
    user = cluster.user(0)
    client = HttpClient()
    # requests are signed at the real time, whatever the service's clock says
    store = MultipartStore(client, endpoint=cluster.endpoint, bucket=BUCKET, access_key=user.access_key,
                           secret_key=user.secret_key, region=cluster.region, clock=SYSTEM_CLOCK)
    return client, UploadService(records=records, store=store, spool_dir=spool, part_size=5 * MiB,
                                 max_upload_bytes=64 * MiB, max_uploads_per_client=64, expiry_s=86400,
                                 max_metadata_bytes=4096, clock=clock, orphan_grace_s=GRACE_S, **kw)


def keys(s3, prefix: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


def multipart_ids(s3) -> set[str]:
    return {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])}


def modified(s3, key: str) -> float:
    """The store's time of ``key``, to the millisecond as a listing gives it (HEAD's is to the second)."""
    [obj] = s3.list_objects_v2(Bucket=BUCKET, Prefix=key)["Contents"]
    return obj["LastModified"].timestamp()


def test_the_sweep_removes_what_no_record_names_once_past_the_grace(cluster, s3, tmp_path, monkeypatch):
    # Pages of two: the listings' continuation (ListObjectsV2's token, ListMultipartUploads'
    # markers) is walked as it would be past 1,000 objects.
    monkeypatch.setattr(s3_module, "_LIST_PAGE", 2)
    clock = FakeClock(start=time.time())
    catalogue = open_catalogue(CatalogueConfig(backend="sqlite", path=tmp_path / "catalogue.sqlite3"), clock=clock)
    records = UploadRecords(catalogue, clock=clock)

    async def main() -> None:
        client, uploads = make_service(cluster, records, tmp_path / "spool", clock)
        await uploads.store.ensure_bucket()
        data = os.urandom(6 * MiB + 999)
        live = await uploads.create("alice-app", creation(len(data)), None)
        live = await uploads.patch("alice-app", live.id, patching(0, 300_000), MemoryBody(data[:300_000]))
        [(named, _)] = live.segments
        held = await uploads.create("alice-app", creation(1000), None)
        # A PATCH on another host between its segment's PUT and its record write: it holds the lease.
        fence, _ = await anyio.to_thread.run_sync(records.acquire, held.id, "host-b:1:ab")
        in_flight = f"incomplete/{held.id}/0.{secrets.token_hex(6)}"
        s3.put_object(Bucket=BUCKET, Key=in_flight, Body=b"h" * 100)
        # What crashes leave: a segment PUT whose record was never written (the live upload's), the
        # segments of an upload removed while the store refused their delete (no record), a
        # multipart upload whose record's INSERT never happened.
        crashed = f"incomplete/{live.id}/0.{secrets.token_hex(6)}"
        removed = f"incomplete/{secrets.token_hex(16)}/3.{secrets.token_hex(6)}"
        for key in (crashed, removed):
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"o" * 1000)
        stray = s3.create_multipart_upload(Bucket=BUCKET, Key=f"uploads/{secrets.token_hex(16)}")["UploadId"]
        junk = "incomplete/not-an-upload/x"  # not a key the service makes: not its to judge
        s3.put_object(Bucket=BUCKET, Key=junk, Body=b"j")

        # Inside the grace period nothing goes, named or not.
        janitor = UploadJanitor(uploads, interval_s=60, clock=clock)
        assert await janitor.run_once() == (0, 0, 0, 0)
        everything = {named, in_flight, crashed, removed, junk}
        assert keys(s3, "incomplete/") == everything
        assert {live.store_upload_id, held.store_upload_id, stray} <= multipart_ids(s3)

        time.sleep(0.3)
        young = f"incomplete/{secrets.token_hex(16)}/0.{secrets.token_hex(6)}"  # an orphan of now
        s3.put_object(Bucket=BUCKET, Key=young, Body=b"y")
        oldest_kept = modified(s3, young)
        assert oldest_kept - max(modified(s3, k) for k in (crashed, removed)) > 0.2
        # Past the grace period for all but the young one (the store's times, the service's clock).
        clock.set_time(oldest_kept + GRACE_S - 0.1)
        assert await janitor.run_once() == (0, 0, 2, 1)
        # The next pass within a quarter of the grace period lists nothing.
        s3.put_object(Bucket=BUCKET, Key=removed, Body=b"o")
        clock.set_time(oldest_kept + GRACE_S + GRACE_S / 4 - 1)
        assert await janitor.run_once() == (0, 0, 0, 0)
        s3.delete_object(Bucket=BUCKET, Key=removed)
        assert keys(s3, "incomplete/") == {named, in_flight, young, junk}
        live_ids = multipart_ids(s3)
        assert {live.store_upload_id, held.store_upload_id} <= live_ids and stray not in live_ids
        assert uploads.counts["orphan_segments_deleted"] == 2 and uploads.counts["stray_uploads_aborted"] == 1

        # The live upload goes on from its named segment and completes with the right bytes.
        done = await uploads.patch("alice-app", live.id, patching(300_000, len(data) - 300_000),
                                   MemoryBody(data[300_000:]))
        assert done.finished
        assert s3.get_object(Bucket=BUCKET, Key=live.key)["Body"].read() == data
        # The held upload's request lost (its lease given back, its record never naming the
        # segment): the next sweep takes the segment; the young orphan once it is old enough.
        await anyio.to_thread.run_sync(records.release, held.id, fence)
        clock.set_time(oldest_kept + GRACE_S + 1)
        assert await UploadJanitor(uploads, interval_s=60, clock=clock).run_once() == (0, 0, 2, 0)
        assert keys(s3, "incomplete/") == {junk}
        assert held.store_upload_id in multipart_ids(s3)  # its record still names it
        assert uploads.counts["orphan_sweep_failures"] == 0
        await client.aclose()

    try:
        anyio.run(main)
    finally:
        catalogue.close()


@pytest.fixture(scope="module")
def pg():
    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    server = start_postgres()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE loop")
        yield server
    finally:
        server.stop()


def test_a_database_that_does_not_answer_holds_up_no_other_task(cluster, s3, tmp_path, pg):
    """The records' reads and writes wait in worker threads: while another session holds the
    ``uploads`` table locked (1.5 s), recover(), a HEAD and eight PATCHes wait for it, and a task
    ticking every 10 ms on the same loop never misses more than a fraction of that."""
    dsn = pg.dsn("loop")
    catalogue = open_catalogue(CatalogueConfig(backend="postgresql", dsn=dsn, pool_size=4), clock=SYSTEM_CLOCK)
    records = UploadRecords(catalogue)
    hold_s = 1.5

    async def main() -> None:
        client, uploads = make_service(cluster, records, tmp_path / "spool", SYSTEM_CLOCK, db_threads=4)
        await uploads.store.ensure_bucket()
        data = os.urandom(64 * 1024)
        ids = [(await uploads.create("alice-app", creation(10 * len(data)), None)).id for _ in range(8)]
        gaps: list[float] = []
        done = anyio.Event()

        async def tick() -> None:
            last = time.monotonic()
            while not done.is_set():
                await anyio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        results: dict[str, object] = {}

        async def run(name: str, call) -> None:
            results[name] = await call()

        def lock_for_a_while() -> float:
            with psycopg.connect(dsn) as conn:  # one transaction: the lock holds until it ends
                conn.execute("LOCK TABLE uploads IN ACCESS EXCLUSIVE MODE")
                locked.set()
                time.sleep(hold_s)
                return time.monotonic()

        locked = threading.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            tg.start_soon(run, "unlocked_at", lambda: anyio.to_thread.run_sync(lock_for_a_while))
            await anyio.to_thread.run_sync(locked.wait)
            started = time.monotonic()
            gaps.clear()
            tg.start_soon(run, "recover", uploads.recover)
            tg.start_soon(run, "head", lambda: uploads.head("alice-app", ids[0]))
            for i, uid in enumerate(ids):
                tg.start_soon(run, f"patch{i}",
                              lambda uid=uid: uploads.patch("alice-app", uid, patching(0, len(data)), MemoryBody(data)))
            while len(results) < 3 + len(ids):
                await anyio.sleep(0.05)
            finished = time.monotonic()
            done.set()
        unlocked = results["unlocked_at"]
        assert isinstance(unlocked, float) and finished >= unlocked  # they did wait for the lock
        assert finished - started >= hold_s * 0.8
        assert results["recover"] == [] and results["head"].offset == 0
        assert all(results[f"patch{i}"].offset == len(data) for i in range(len(ids)))
        # The loop went on: ticks all along (the wait was 1.5 s; one stall on the loop would be all of it).
        assert len(gaps) >= 20 and max(gaps) < hold_s / 2, (len(gaps), max(gaps))
        await client.aclose()

    try:
        anyio.run(main)
    finally:
        catalogue.close()


def test_a_segment_whose_record_write_may_have_committed_is_kept(cluster, s3, tmp_path, pg):
    """A PATCH's segment is PUT, then its record write's COMMIT is applied by PostgreSQL but its
    answer lost (a relay cuts the connection: commit_cutter.py). The PATCH fails, yet the record
    names the segment (a HEAD reads its bytes as stored), so the segment must stay: the client
    resumes from that offset and the completed upload holds every byte. (Had the write not
    committed, the segment would be an orphan for the sweep.)"""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE lost_commit")
    # The record write naming a segment: its JSON (a bound parameter) holds the segment's key.
    cutter = CommitCutter(pg.port, after=b"incomplete/")
    catalogue = open_catalogue(CatalogueConfig(
        backend="postgresql", dsn=f"host=127.0.0.1 port={cutter.port} user=hw dbname=lost_commit", pool_size=2),
        clock=SYSTEM_CLOCK)
    records = UploadRecords(catalogue)
    data = os.urandom(7 * MiB)
    first = MiB + 12345  # less than a part: stored as a segment

    async def main() -> None:
        client, uploads = make_service(cluster, records, tmp_path / "spool", SYSTEM_CLOCK)
        try:
            await uploads.store.ensure_bucket()
            uid = (await uploads.create("alice-app", creation(len(data)), None)).id
            with pytest.raises(Exception):
                await uploads.patch("alice-app", uid, patching(0, first), MemoryBody(data[:first]))
            assert cutter.cut.is_set()
            st = await uploads.head("alice-app", uid)
            assert st.offset == first and len(st.segments) == 1  # the write did commit
            assert keys(s3, f"incomplete/{uid}/") == {st.segments[0][0]}
            # Another host resumes (no local spool): the segment is read back from the store.
            other_client, other = make_service(cluster, records, tmp_path / "spool2", SYSTEM_CLOCK)
            try:
                done = await other.patch("alice-app", uid, patching(first, len(data) - first), MemoryBody(data[first:]))
            finally:
                await other_client.aclose()
            assert done.finished
            assert s3.get_object(Bucket=BUCKET, Key=f"uploads/{uid}")["Body"].read() == data
        finally:
            await client.aclose()

    try:
        anyio.run(main)
    finally:
        catalogue.close()
        cutter.close()


def test_an_upload_completed_in_the_store_whose_record_write_failed_completes(cluster, s3, tmp_path, pg):
    """The last PATCH's CompleteMultipartUpload succeeds, then the record saying so fails (the
    database unreachable for that write: the relay drops its COMMIT, the server rolls back). The
    multipart upload is gone, the object whole: the client's resumption (HEAD, the rest sent
    again) must record the upload complete rather than send parts to an upload the store no
    longer has (503 for ever: the upload never usable). One never resumed is terminated with
    its object (it was left in the store for ever)."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE lost_completion")
    # The write recording the completion: its JSON (a bound parameter) holds the completion time.
    cutter = CommitCutter(pg.port, after=b'"completed":1', deliver=False)
    catalogue = open_catalogue(CatalogueConfig(
        backend="postgresql", dsn=f"host=127.0.0.1 port={cutter.port} user=hw dbname=lost_completion", pool_size=2),
        clock=SYSTEM_CLOCK)
    records = UploadRecords(catalogue)
    data = os.urandom(7 * MiB + 4321)

    async def main() -> None:
        client, uploads = make_service(cluster, records, tmp_path / "spool", SYSTEM_CLOCK)
        try:
            await uploads.store.ensure_bucket()
            uid, dropped = [(await uploads.create("alice-app", creation(len(data)), None)).id for _ in range(2)]
            for u in (uid, dropped):
                cutter.arm(deliver=False)
                with pytest.raises(Exception):
                    await uploads.patch("alice-app", u, patching(0, len(data)), MemoryBody(data))
                assert cutter.cut.is_set()
                assert s3.get_object(Bucket=BUCKET, Key=f"uploads/{u}")["Body"].read() == data
            # One its client gives up on (terminated, as expiry would): its object goes with it.
            await uploads.delete("alice-app", dropped)
            assert keys(s3, f"uploads/{dropped}") == set()
            # The client resumes as tus says: HEAD for the offset (the record's: the part cut
            # before the last one), then the rest again.
            st = await uploads.head("alice-app", uid)
            assert not st.finished and 0 < st.offset < len(data)
            st = await uploads.patch("alice-app", uid, patching(st.offset, len(data) - st.offset),
                                     MemoryBody(data[st.offset:]))
            assert st.finished and st.offset == len(data)
            assert (await uploads.head("alice-app", uid)).finished
            assert s3.get_object(Bucket=BUCKET, Key=f"uploads/{uid}")["Body"].read() == data
        finally:
            await client.aclose()

    try:
        anyio.run(main)
    finally:
        catalogue.close()
        cutter.close()
