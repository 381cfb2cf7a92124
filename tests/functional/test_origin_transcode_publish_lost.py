"""A publish whose COMMIT's answer never comes back: the title is published, and its version
must stay in the store; and one whose COMMIT never arrives: not published, the attempt's prefix
recorded for the version collector, the next attempt publishing.

The transcoder (``headwater node transcoder``, as test_origin_transcode.py runs it) uses a
PostgreSQL catalogue through a TCP relay this module runs. The relay lets every statement
through; once the worker's publish (the ``UPDATE titles … renditions = …`` of ``complete``) has
gone by, it passes that transaction's COMMIT to the server, waits for the server to answer it,
drops the answer and closes the client's connection: the server committed, the worker reads
end-of-file (psycopg's OperationalError, the catalogue's BackendUnavailable) and cannot tell
whether its publish happened, as after a network cut or a failover at that moment. The worker
must not delete the prefix it may have just published (the version collector deletes it later
if the publish did not commit: the failure records it, the claim refuses a named prefix). The
second test drops the COMMIT itself (the server rolls back): the same failure, which must leave
nothing that is never collected. One transcoder for both (the cluster is the module's).
"""

from __future__ import annotations

import time

import psycopg
import pytest

from headwater.origin.catalogue import JobState, TitleState
from tests.functional.commit_cutter import CommitCutter
from tests.functional.drm_media import make_clip
from tests.functional.test_origin_transcode import SECTIONS, keys_under, submit, transcoder_world, wait_state

from .test_origin_catalogue import postgres  # noqa: F401 - the session's PostgreSQL server

#: the publish's statement (complete's UPDATE of the title's renditions)
PUBLISH = b"renditions = $"


@pytest.fixture(scope="module")
def world(cluster, s3, tmp_path_factory, postgres):  # noqa: F811
    with psycopg.connect(postgres.dsn(), autocommit=True) as c:
        c.execute("CREATE DATABASE publish_lost")
    cutter = CommitCutter(postgres.port, after=PUBLISH)
    dsn = f"host=127.0.0.1 port={cutter.port} user=hw dbname=publish_lost"
    clip = make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=4, size="320x180", gop=25)
    # [origin.catalogue] last: after the ladder's tables, the config's one catalogue.
    sections = SECTIONS + f'\n[origin.catalogue]\nbackend = "postgresql"\ndsn = "{dsn}"\nsearch = "database"\n'
    cfg, catalogue, worker = transcoder_world(cluster, s3, sections)
    try:
        yield catalogue, clip, worker, cutter
    finally:
        worker.kill()
        worker.log.close()
        catalogue.close()
        cutter.close()


def test_a_publish_whose_commit_answer_is_lost_keeps_its_version(world, s3):
    catalogue, clip, worker, cutter = world
    cutter.arm(deliver=True)
    title_id, job_id = submit(s3, catalogue, "commit-lost", clip.read_bytes())
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker, timeout=90)
    assert title.state is TitleState.PUBLISHED, title.error
    assert cutter.cut.is_set(), "the relay never cut a publish's COMMIT"
    prefix = f"titles/{title_id}/v{job_id}-1/"
    assert {r.path for r in title.renditions} and all(r.path.startswith(prefix) for r in title.renditions)
    assert catalogue.get_job(job_id).state is JobState.DONE
    # The worker's failure handling has run (it gave the job back, found it done) by now.
    deadline = time.monotonic() + 20
    log = worker.cluster.root / "logs" / "transcoder.out"
    while b"lease lost before its failure was recorded" not in log.read_bytes():
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.1)
    stored = set(keys_under(s3, prefix))
    assert {r.path for r in title.renditions} <= stored, (sorted(stored), worker.tail())
    # Published, so never recorded for the version collector either.
    assert prefix not in {r.prefix for r in catalogue.retired_versions()}


def test_a_publish_whose_commit_never_arrives_is_retried_and_its_prefix_recorded(world, s3):
    catalogue, clip, worker, cutter = world
    cutter.arm(deliver=False)
    title_id, job_id = submit(s3, catalogue, "commit-dropped", clip.read_bytes())
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker, timeout=120)
    assert title.state is TitleState.PUBLISHED, title.error
    assert cutter.cut.is_set(), "the relay never dropped a publish's COMMIT"
    job = catalogue.get_job(job_id)
    assert job.state is JobState.DONE and job.attempts == 2, job
    first, second = (f"titles/{title_id}/v{job_id}-{n}/" for n in (1, 2))
    assert all(r.path.startswith(second) for r in title.renditions)
    # The unpublished attempt's prefix: kept at once (the worker could not tell), recorded with
    # its failure for the collector; the published one never recorded.
    retired = {r.prefix: r.reason for r in catalogue.retired_versions()}
    assert retired.get(first) == "failed" and second not in retired, retired
    assert {r.path for r in title.renditions} <= set(keys_under(s3, second))
