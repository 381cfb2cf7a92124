"""The transcode pipeline on real daemons: an object store cluster, the licence node's key
store (LMDB, the daemon itself is not needed), the origin's SQLite catalogue, and the
``transcoder`` role as an operator runs it (``headwater node transcoder``).

A 12-second ``testsrc2`` clip uploaded to ``uploads`` and a title + job enqueued in the
catalogue are published by the worker: ``published`` with its renditions, ffprobe reads the
MPD and the HLS master, the 180p rung decrypts with the title's key from the key store to the
source's picture (SSIM against the source, which a wrong key fails), and nothing is written
outside ``titles/T/v<job>-<attempt>/``. A corrupt upload fails its title with ffprobe's reason
and publishes nothing. A worker SIGKILLed mid-job (with its ffmpeg) loses the job when its
lease expires; the restarted worker takes it as attempt 2 and publishes one version, and the
dead attempt's half-written prefix is deleted by the version collector once the retention has
passed (kept before); a withdrawn title retried and published again has its earlier version
collected likewise, the published version and the other titles' objects never. Every title here is packaged while ffmpeg encodes (the default),
but the last, packaged after the run with ``stream_packaging = false``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from headwater.bench.origin import set_key
from headwater.clock import FakeClock
from headwater.config import load
from headwater.drm.client import open_title_keys
from headwater.origin.catalogue import JobState, TitleDraft, TitleState, open_catalogue
from headwater.origin.daemon import store_settings
from headwater.origin.transcode.config import origin_catalogue
from headwater.origin.transcode.versions import VersionCollector
from headwater.origin.transcode.worker import StoreSettings, open_objects
from tests.cluster import free_ports
from tests.functional.drm_media import FFMPEG, FFPROBE, make_clip, run
from tests.functional.origin_harness import SMALL_LADDER

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB")
TOKEN_ENV = "HW_TEST_TRANSCODE_TOKEN_SECRET"
#: the version collector's retention in these tests' sweeps (its clock is set past it or not)
RETENTION_S = 86400.0

SECTIONS = """
[origin]
id = "origin"
port = {origin_port}
admin_port = {origin_admin}
tls = false

[licence]
id = "licence"
port = {licence_port}
admin_port = {licence_admin}
tls = false

[[licence.tokens.keys]]
id = "t"
alg = "HS256"
secret_env = "{token_env}"

[transcoder]
admin_port = {admin}
workers = 1
lease_seconds = 4
heartbeat_seconds = 1
poll_seconds = 0.2
preset = "ultrafast"
audio_bitrate = "64k"
thumbnail_seconds = 5

""" + SMALL_LADDER


class Transcoder:
    def __init__(self, cluster, admin: int) -> None:
        self.cluster, self.admin = cluster, admin
        self.proc: subprocess.Popen | None = None
        self.log = open(cluster.root / "logs" / "transcoder.out", "ab")

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "headwater", "node", "transcoder", "--worker", "0",
                                      "-c", str(self.cluster.config_path)], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, TOKEN_ENV: "x" * 32})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.tail()
            try:
                if httpx.get(f"http://127.0.0.1:{self.admin}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the transcoder did not start\n" + self.tail())

    def kill(self) -> None:
        """SIGKILL the worker and its ffmpeg (its process group): a host lost mid-job."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self) -> str:
        return (self.cluster.root / "logs" / "transcoder.out").read_text(errors="replace")[-3000:]


def transcoder_world(cluster, s3, sections: str = SECTIONS):
    """``sections`` appended to the cluster's config (free ports), the uploads bucket, the
    catalogue, and a started transcoder: ``(cfg, catalogue, worker)``; the caller stops both."""
    origin_port, origin_admin, licence_port, licence_admin, admin = free_ports(5)
    with open(cluster.config_path, "a") as f:
        f.write(sections.format(origin_port=origin_port, origin_admin=origin_admin, licence_port=licence_port,
                                licence_admin=licence_admin, admin=admin, token_env=TOKEN_ENV))
    os.environ[TOKEN_ENV] = "x" * 32
    cfg = load(cluster.config_path)
    s3.create_bucket(Bucket="uploads")
    catalogue = open_catalogue(origin_catalogue(cfg))
    worker = Transcoder(cluster, admin)
    worker.start()
    return cfg, catalogue, worker


#: the transcoder's VP9/Opus settings the WebM tests add (libvpx realtime: a few seconds a clip)
VP9_SETTINGS = 'codecs = ["h264", "vp9"]\nvp9_deadline = "realtime"\nvp9_cpu_used = 8\nopus_bitrate = "48k"\n'


@contextlib.contextmanager
def transcoder_setup(cluster, s3, tmp_path_factory, sections: str = SECTIONS, seconds: int = 12):
    """A ``seconds`` long 320x180 clip and :func:`transcoder_world`: ``(cfg, catalogue, clip,
    worker)``, stopped on exit."""
    clip = make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=seconds, size="320x180", gop=25)
    cfg, catalogue, worker = transcoder_world(cluster, s3, sections)
    try:
        yield cfg, catalogue, clip, worker
    finally:
        worker.kill()
        worker.log.close()
        catalogue.close()


@pytest.fixture(scope="module")
def setup(cluster, s3, tmp_path_factory):
    with transcoder_setup(cluster, s3, tmp_path_factory) as world:
        yield world


def submit(s3, catalogue, name: str, body: bytes) -> tuple[int, int]:
    """An upload in the store, a title and its transcode job, as POST /api/titles makes them."""
    s3.put_object(Bucket="uploads", Key=f"uploads/{name}", Body=body)
    title = catalogue.create_title(TitleDraft(title=f"Night Train {name}", upload=name, owner="creator-app"))
    job = catalogue.enqueue("transcode", f"transcode:{title.id}:{name}", title_id=title.id,
                            payload={"bucket": "uploads", "key": f"uploads/{name}"})
    return title.id, job.id


def wait_state(catalogue, title_id: int, states: set[TitleState], worker: Transcoder, timeout: float = 40):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = catalogue.get_title(title_id)
        if t.state in states:
            return t
        time.sleep(0.05)
    raise AssertionError(f"title {title_id} is {t.state.value} ({t.error}) after {timeout} s\n{worker.tail()}")


def keys_under(s3, prefix: str) -> list[str]:
    try:
        found = s3.list_objects_v2(Bucket="videos", Prefix=prefix).get("Contents", [])
    except s3.exceptions.NoSuchBucket:  # nothing published yet (this test ran first)
        return []
    return sorted(o["Key"] for o in found)


def download(s3, prefix: str, dest: Path) -> None:
    for k in keys_under(s3, prefix):
        p = dest / k.removeprefix(prefix)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(s3.get_object(Bucket="videos", Key=k)["Body"].read())


def ssim(encrypted: Path, source: Path, key: bytes | None = None) -> float:
    """ffmpeg's SSIM of a rendition against the source; ``key`` decrypts a CENC rendition
    (None: ``encrypted`` is in the clear, e.g. WebM decrypted by the test itself)."""
    decrypt = ["-decryption_key", key.hex()] if key is not None else []
    out = subprocess.run([FFMPEG, "-v", "info", "-nostats", *decrypt, "-i", str(encrypted),
                          "-i", str(source), "-lavfi", "[0:v][1:v]ssim", "-f", "null", "-"],
                         capture_output=True, timeout=60).stderr.decode(errors="replace")
    m = re.search(r"SSIM .* All:([0-9.]+)", out)
    return float(m.group(1)) if m else 0.0


def test_an_upload_is_published_encrypted_under_its_version_prefix(setup, s3, tmp_path):
    cfg, catalogue, clip, worker = setup
    title_id, job_id = submit(s3, catalogue, "clip-1", clip.read_bytes())
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker)
    assert title.state is TitleState.PUBLISHED, title.error
    prefix = f"titles/{title_id}/v{job_id}-1/"
    by_name = {r.name: r for r in title.renditions}
    assert set(by_name) == {"dash", "hls", "180p", "90p", "audio"}
    assert by_name["dash"].path == prefix + "manifest.mpd" and by_name["hls"].path == prefix + "master.m3u8"
    assert (by_name["180p"].width, by_name["180p"].height, by_name["90p"].height) == (320, 180, 90)
    assert by_name["180p"].codec.startswith("avc1.") and by_name["audio"].codec == "mp4a.40.2"
    assert title.progress == 1.0 and catalogue.get_job(job_id).state is JobState.DONE
    # Nothing outside the version prefix; every rendition's object is there.
    stored = keys_under(s3, f"titles/{title_id}/")
    assert stored and all(k.startswith(prefix) for k in stored), stored
    assert {r.path for r in title.renditions} <= set(stored)
    assert {prefix + n for n in ("poster.jpg", "thumbs/thumbs.vtt", "thumbs/sprite-001.jpg",
                                 "video-1/init.mp4", "video-2/seg-1.m4s")} <= set(stored)

    local = tmp_path / "title"
    download(s3, prefix, local)
    # ffprobe reads the HLS master and every variant and rendition it names (the static ffprobe
    # 8.1 has no DASH demuxer: the MPD's representations are read from its XML instead).
    # (-allowed_extensions ALL: the playlists' ClearKey key URI is a data: URI ffmpeg blocks by
    # default; without the key the probe's decoder complains about the encrypted samples.)
    probe = run(FFPROBE, "-v", "quiet", "-allowed_extensions", "ALL", "-show_entries", "stream=codec_type,width,height", "-of", "csv=p=0",
                local / "master.m3u8").stdout.decode()
    assert "video,320,180" in probe and "video,160,90" in probe and "audio" in probe, probe
    mpd = ET.parse(local / "manifest.mpd").getroot()
    reps = {(r.get("width"), r.get("height")) for r in mpd.iter("{urn:mpeg:dash:schema:mpd:2011}Representation")}
    assert reps == {("320", "180"), ("160", "90"), (None, None)}, reps
    assert (local / "poster.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert "#xywh=0,0,160,90" in (local / "thumbs/thumbs.vtt").read_text()

    # The 180p rung decrypts with the title's key (from the key store, by title) to the source.
    keys = open_title_keys(cfg)
    try:
        (info,) = [i for i in keys.infos(str(title_id))]
        key = keys.get(info.kid).key
    finally:
        keys.close()
    assert info.scheme == "cbcs" and info.kid.hex() in (local / "manifest.mpd").read_text().replace("-", "")
    segs = sorted((local / "video-1").glob("seg-*.m4s"), key=lambda p: int(p.stem.split("-")[1]))
    joined = tmp_path / "video-1.mp4"
    joined.write_bytes((local / "video-1/init.mp4").read_bytes() + b"".join(s.read_bytes() for s in segs))
    assert ssim(joined, clip, key) > 0.9
    assert ssim(joined, clip, bytes(16)) < 0.8


def test_a_corrupt_upload_fails_its_title_and_publishes_nothing(setup, s3):
    cfg, catalogue, clip, worker = setup
    data = bytearray(clip.read_bytes())
    data[:4096] = os.urandom(4096)  # the ftyp and moov head are gone
    title_id, job_id = submit(s3, catalogue, "corrupt", bytes(data))
    title = wait_state(catalogue, title_id, {TitleState.FAILED, TitleState.PUBLISHED}, worker)
    # Random bytes sometimes read as a stray stream (ffprobe once found a subtitle track in
    # them): either way the upload is refused as media, not retried as an outage.
    assert title.state is TitleState.FAILED, title.error
    assert "not a video ffprobe can read" in title.error or "has no video stream" in title.error, title.error
    # The title and its job fail in one transaction: a failed title's job is never still leased.
    job = catalogue.get_job(job_id)
    assert job.state is JobState.FAILED and job.attempts == 1  # bad input is not retried
    assert title.renditions == () and keys_under(s3, f"titles/{title_id}/") == []


def sweep_at(cfg, catalogue, wall: float, retention_s: float = RETENTION_S):
    """One sweep of the version collector as the transcoder runs it, against the real store and
    catalogue, with its clock at ``wall``: what it did (:class:`Swept`)."""
    endpoint, access, secret, region = store_settings(cfg, cfg.origin)
    store = StoreSettings(endpoint=endpoint, access_key=access, secret_key=secret, region=region)
    collector = VersionCollector(catalogue, lambda: open_objects(store), bucket="videos", retention_s=retention_s,
                                 clock=FakeClock(start=wall), delete_batch=7)  # several DeleteObjects a prefix
    return collector.sweep_once()


def collected_only(s3, cfg, catalogue, prefix: str, reason: str) -> None:
    """``prefix`` (retired for ``reason``, holding objects) is kept by a sweep before the
    retention has passed since it was retired, and deleted by one after it, its record with it;
    every other object of the bucket is untouched."""
    (record,) = [r for r in catalogue.retired_versions() if r.prefix == prefix]
    assert record.reason == reason, record
    assert keys_under(s3, prefix), f"{prefix} holds nothing: the test proves nothing"
    # Beside what the transcoder wrote: a name XML must escape, inside the prefix; and keys that
    # share its characters but not its folder (the prefix without its slash, a longer attempt
    # number), which must survive.
    decoys = [prefix[:-1], prefix[:-1] + "0/decoy.m4s", prefix[:-1] + "0"]
    for key in (prefix + "odd &<>'\" name.txt", *decoys):
        s3.put_object(Bucket="videos", Key=key, Body=b"x")
    doomed = keys_under(s3, prefix)
    others = [k for k in keys_under(s3, "titles/") if not k.startswith(prefix)]
    assert set(decoys) <= set(others)
    assert others
    sweep_at(cfg, catalogue, record.since + RETENTION_S - 1)  # (an earlier test's records may be due)
    assert keys_under(s3, prefix) == doomed and prefix in {r.prefix for r in catalogue.retired_versions()}
    swept = sweep_at(cfg, catalogue, record.since + RETENTION_S + 1)
    assert swept.errors == 0 and swept.prefixes >= 1 and swept.objects >= len(doomed), swept
    assert keys_under(s3, prefix) == []
    assert prefix not in {r.prefix for r in catalogue.retired_versions()}
    assert [k for k in keys_under(s3, "titles/") if not k.startswith(prefix)] == others
    for key in decoys:
        s3.delete_object(Bucket="videos", Key=key)


def test_a_worker_killed_mid_job_is_replaced_and_one_version_published(setup, s3):
    """The dead attempt's half-written prefix is recorded by the lease that takes its job over,
    kept through the retention, then deleted by the version collector; the published version and
    the other titles' objects are untouched."""
    cfg, catalogue, clip, worker = setup
    title_id, job_id = submit(s3, catalogue, "killed", clip.read_bytes())
    dead = f"titles/{title_id}/v{job_id}-1/"
    wait_state(catalogue, title_id, {TitleState.TRANSCODING}, worker, timeout=20)
    deadline = time.monotonic() + 20
    while not keys_under(s3, dead):  # killed once it has written part of its version
        assert time.monotonic() < deadline and catalogue.get_title(title_id).state is TitleState.TRANSCODING
        time.sleep(0.02)
    worker.kill()
    title = catalogue.get_title(title_id)
    assert title.state is TitleState.TRANSCODING, f"the job ended before the kill ({title.state.value})"
    assert not any(r.prefix == dead for r in catalogue.retired_versions())  # not known dead yet
    worker.start()  # the restarted worker takes the job once the dead one's lease has expired
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker)
    assert title.state is TitleState.PUBLISHED, title.error
    job = catalogue.get_job(job_id)
    assert job.state is JobState.DONE and job.attempts == 2
    prefix = f"titles/{title_id}/v{job_id}-2/"
    assert {r.path.rsplit("/", 1)[0] + "/" for r in title.renditions if r.name in ("dash", "hls")} == {prefix}
    stored = keys_under(s3, f"titles/{title_id}/")
    assert {r.path for r in title.renditions} <= set(stored)
    assert stored and all(k.startswith((prefix, dead)) for k in stored), stored
    collected_only(s3, cfg, catalogue, dead, "dead")
    assert set(keys_under(s3, f"titles/{title_id}/")) == {k for k in stored if k.startswith(prefix)}


def test_a_republished_titles_earlier_version_is_collected_after_the_retention(setup, s3):
    """Withdrawn and retried, a title is published again under a new version: the publish
    records the earlier one (never the new), which a sweep deletes only past the retention."""
    cfg, catalogue, clip, worker = setup
    title_id, job_id = submit(s3, catalogue, "republished", clip.read_bytes())
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker)
    assert title.state is TitleState.PUBLISHED, title.error
    first = f"titles/{title_id}/v{job_id}-1/"
    catalogue.set_state(title_id, TitleState.WITHDRAWN)
    _, again = catalogue.retry_title(title_id, "transcode", payload={"bucket": "uploads",
                                                                    "key": "uploads/republished"})
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker)
    assert title.state is TitleState.PUBLISHED, title.error
    second = f"titles/{title_id}/v{again.id}-1/"
    assert {r.path.rsplit("/", 1)[0] + "/" for r in title.renditions if r.name in ("dash", "hls")} == {second}
    assert second not in {r.prefix for r in catalogue.retired_versions()}
    collected_only(s3, cfg, catalogue, first, "superseded")
    assert {r.path for r in catalogue.get_title(title_id).renditions} <= set(keys_under(s3, second))
    # The daemon's own collector (worker 0) has swept at start, at the real clock: nothing was due.
    health = httpx.get(f"http://127.0.0.1:{worker.admin}/healthz", timeout=5).json()
    assert health["versions_sweeps"] >= 1 and health["versions_sweep_errors"] == 0, health
    metrics = httpx.get(f"http://127.0.0.1:{worker.admin}/metrics", timeout=5).text
    assert "hw_transcoder_versions_prefixes_removed" in metrics


def test_the_store_down_mid_job_costs_an_attempt_and_the_title_is_published_once(setup, cluster, s3):
    """The S3 gateway killed while a job runs: the attempt fails (its download, a part or the
    publish finds no store), the job is queued again after the backoff, and once the store is
    back the next attempt publishes one version; the title is never failed for an outage."""
    cfg, catalogue, clip, worker = setup
    title_id, job_id = submit(s3, catalogue, "store-down", clip.read_bytes())
    wait_state(catalogue, title_id, {TitleState.TRANSCODING}, worker, timeout=20)
    cluster.kill_node("s3")
    try:
        deadline = time.monotonic() + 40
        while True:  # until the attempt ends: the job queued again, the title never failed
            job, title = catalogue.get_job(job_id), catalogue.get_title(title_id)
            assert title.state is not TitleState.FAILED, title.error
            if job.state is JobState.QUEUED and job.attempts >= 1:
                break
            assert time.monotonic() < deadline, f"the attempt did not end with the store down\n{worker.tail()}"
            time.sleep(0.1)
        title = catalogue.get_title(title_id)
        assert title.state is TitleState.TRANSCODING and "retrying" in (title.error or ""), title
    finally:
        cluster.restart_node("s3")
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker, timeout=60)
    assert title.state is TitleState.PUBLISHED, title.error
    job = catalogue.get_job(job_id)
    assert job.state is JobState.DONE and job.attempts >= 2
    prefix = f"titles/{title_id}/v{job_id}-{job.attempts}/"
    # What the failed attempts could not delete with the store down is recorded with their
    # failures, and collected past the retention.
    failed = {f"titles/{title_id}/v{job_id}-{n}/" for n in range(1, job.attempts)}
    assert failed <= {r.prefix for r in catalogue.retired_versions() if r.reason == "failed"}
    stored = keys_under(s3, f"titles/{title_id}/")
    assert stored and all(k.startswith((prefix, *failed)) for k in stored), stored
    swept = sweep_at(cfg, catalogue, time.time() + RETENTION_S + 1)
    assert swept.errors == 0 and swept.prefixes >= len(failed), swept
    assert keys_under(s3, f"titles/{title_id}/") == [k for k in stored if k.startswith(prefix)]


def test_with_stream_packaging_off_the_finished_mp4_is_packaged_after_the_run(setup, cluster, s3):
    """The default path packages each segment while ffmpeg encodes (every test above took it);
    ``stream_packaging = false`` keeps the old one, the progressive MP4 packaged after the run,
    with the same files published."""
    cfg, catalogue, clip, worker = setup
    assert "packaged while encoding" in worker.tail()  # the earlier titles' path
    worker.kill()
    text = cluster.config_path.read_text()
    cluster.config_path.write_text(set_key(text, "transcoder", "stream_packaging", "false"))
    try:
        worker.start()
        title_id, job_id = submit(s3, catalogue, "after-the-run", clip.read_bytes())
        title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker)
        assert title.state is TitleState.PUBLISHED, title.error
        assert "packaged after the encode" in worker.tail()
        prefix = f"titles/{title_id}/v{job_id}-1/"
        stored = {k.removeprefix(prefix) for k in keys_under(s3, f"titles/{title_id}/")}
        assert {"manifest.mpd", "master.m3u8", "poster.jpg", "thumbs/thumbs.vtt", "video-1/init.mp4",
                "video-2/seg-6.m4s"} <= stored
        assert {r.name for r in title.renditions} == {"dash", "hls", "180p", "90p", "audio"}
    finally:
        worker.kill()
        cluster.config_path.write_text(text)
