"""The orphan sweep's rules (sans-IO, :mod:`headwater.origin.upload.orphans`), what it reads of
the records (SQLite), and ``upload_orphan_grace_seconds`` checked when cluster.toml is read. The
sweep against the real store: tests/functional/test_origin_upload_orphans.py."""

from __future__ import annotations

import pytest

from headwater.clock import FakeClock
from headwater.config import ConfigError, loads
from headwater.origin.catalogue import CatalogueConfig, open_catalogue
from headwater.origin.upload.orphans import RecordView, orphan_segments, stray_multipart_uploads, upload_id_of
from headwater.origin.upload.records import UploadRecords
from headwater.origin.upload.s3 import ListedObject, ListedUpload
from headwater.origin.upload.tus import UploadState

A, B, C = "a" * 32, "b" * 32, "c" * 32
NOW, GRACE = 10_000.0, 600.0
OLD, YOUNG = NOW - GRACE - 1, NOW - GRACE + 1


def seg(uid: str, name: str, modified: float = OLD) -> ListedObject:
    return ListedObject(f"incomplete/{uid}/{name}", modified, 10)


def view(*segments: str, held: bool = False, store_id: str = "mp", finished: bool = False) -> RecordView:
    return RecordView(held=held, segments=frozenset(segments), store_upload_id=store_id, finished=finished)


def test_upload_ids_only_from_the_services_own_keys():
    assert upload_id_of(f"incomplete/{A}/0.ab") == A and upload_id_of(f"uploads/{A}") == A
    for key in (f"incomplete/{A}", f"incomplete/{A}/", "incomplete/xyz/0.1", f"uploads/{A}/x",
                f"uploads/{A.upper()}", f"other/{A}/0.1", f"incomplete/{A[:-1]}/0.1"):
        assert upload_id_of(key) is None, key


def test_a_segment_goes_when_old_and_no_record_can_name_it():
    named, crashed = seg(A, "0.named"), seg(A, "0.crashed")
    listed = [named, crashed, seg(B, "1.held"), seg(C, "2.gone"), seg(C, "2.young", YOUNG),
              ListedObject("incomplete/junk/x", OLD, 1)]
    records = {A: view(named.key), B: view(held=True)}
    assert orphan_segments(listed, records, now=NOW, grace_s=GRACE) == [crashed.key, f"incomplete/{C}/2.gone"]
    # Exactly at the grace: kept.
    assert orphan_segments([seg(C, "x", NOW - GRACE)], {}, now=NOW, grace_s=GRACE) == []


def test_a_multipart_upload_goes_when_old_and_no_record_names_it():
    mine = ListedUpload(f"uploads/{A}", "mp", OLD)
    other = ListedUpload(f"uploads/{A}", "mp-2", OLD)  # a second one for the same key
    held = ListedUpload(f"uploads/{B}", "mp-2", OLD)
    unknown, young = ListedUpload(f"uploads/{C}", "x", OLD), ListedUpload(f"uploads/{C}", "y", YOUNG)
    junk = ListedUpload("uploads/not-ours", "z", OLD)
    records = {A: view(), B: view(held=True)}
    assert stray_multipart_uploads([mine, other, held, unknown, young, junk], records, now=NOW,
                                   grace_s=GRACE) == [other, unknown]


def test_the_records_views_read_lease_and_segments_together(tmp_path):
    clock = FakeClock(start=1000.0)
    cat = open_catalogue(CatalogueConfig(backend="sqlite", path=tmp_path / "c.sqlite3"), clock=clock)
    try:
        records = UploadRecords(cat, clock=clock)
        base = dict(owner="o", length=100, metadata="", created=0.0, expires=3600.0, store_upload_id="mp")
        records.insert(UploadState(id=A, key=f"uploads/{A}", **base))
        records.insert(UploadState(id=B, key=f"uploads/{B}", **base))
        fence, st = records.acquire(A, "host")
        records.put(UploadState(id=A, key=f"uploads/{A}", spooled=5, segments=((f"incomplete/{A}/0.x", 5),), **base),
                    fence=fence)
        ids = [A, B, C] + [f"{i:032x}" for i in range(1200)]  # more than one statement's worth
        assert records.views(ids) == {A: view(f"incomplete/{A}/0.x", held=True), B: view()}
        records.release(A, fence)
        assert records.views([A])[A].held is False
    finally:
        cat.close()


def test_the_grace_period_must_outlast_a_lease_and_a_store_request():
    cfg = loads("[origin]\ntls = false\n", path="cluster.toml")
    assert cfg.origin.upload_orphan_grace_s == 3600.0
    ok = loads("[origin]\ntls = false\nupload_lease_seconds = 10\nupload_orphan_grace_seconds = 41\n",
               path="cluster.toml")
    assert ok.origin.upload_orphan_grace_s == 41.0
    with pytest.raises(ConfigError, match=r"cluster\.toml:4: origin\.upload_orphan_grace_seconds: 40 must be more"):
        loads("[origin]\ntls = false\nupload_lease_seconds = 10\nupload_orphan_grace_seconds = 40\n",
              path="cluster.toml")
    with pytest.raises(ConfigError, match="upload_orphan_grace_seconds"):
        loads("[origin]\ntls = false\nupload_orphan_grace_seconds = -1\n", path="cluster.toml")
