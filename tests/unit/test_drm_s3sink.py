"""The packager's S3 sink (drm/package/s3sink.py) against a real HTTP server in this process that
records what it is sent: PUTs overlap up to ``max_in_flight`` and no more, manifests go up only
after every segment landed, and a failed PUT fails the run and is cleaned up by the abort."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from headwater.drm.package.s3sink import S3Sink, S3SinkError, S3Target


class _Store(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.objects: dict[str, bytes] = {}
        self.events: list[tuple[str, str]] = []
        self.spans: dict[str, tuple[float, float]] = {}  # path: (PUT received, answered)
        self.in_flight = self.most_in_flight = 0
        self.fail = ""          # a PUT of a path ending so answers 500
        self.delay_s = 0.05


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Store

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        s = self.server
        start = time.monotonic()
        with s.lock:
            s.in_flight += 1
            s.most_in_flight = max(s.most_in_flight, s.in_flight)
        time.sleep(s.delay_s)
        with s.lock:
            s.in_flight -= 1
            s.events.append(("PUT", self.path))
            s.spans[self.path] = (start, time.monotonic())
            if s.fail and self.path.endswith(s.fail):
                self._answer(500)
                return
            s.objects[self.path] = body
        self._answer(200)

    def do_DELETE(self) -> None:
        with self.server.lock:
            self.server.events.append(("DELETE", self.path))
            self.server.objects.pop(self.path, None)
        self._answer(204)


@pytest.fixture
def store():
    s = _Store()
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s
    s.shutdown()
    s.server_close()


def _sink(store: _Store, **kw) -> S3Sink:
    return S3Sink(S3Target(endpoint=f"http://127.0.0.1:{store.server_port}", bucket="videos", prefix="t/1/",
                           access_key="ak", secret_key="sk"), **kw)


def test_segments_overlap_up_to_the_bound_and_manifests_wait_for_them(store):
    sink = _sink(store, max_in_flight=3)
    for i in range(12):
        sink.put(f"video/seg-{i}.m4s", bytes([i]) * 1000)
    sink.put("manifest.mpd", b"<MPD/>")
    assert "/videos/t/1/manifest.mpd" not in store.objects  # held back until commit
    sink.commit()
    assert store.most_in_flight == 3
    puts = [p for m, p in store.events if m == "PUT"]
    assert puts[-1] == "/videos/t/1/manifest.mpd" and len(puts) == 13
    assert store.objects["/videos/t/1/video/seg-7.m4s"] == bytes([7]) * 1000


def test_manifests_go_up_side_by_side_after_the_segments_and_the_last_one_after_them(store):
    sink = _sink(store, max_in_flight=4)
    for i in range(6):
        sink.put(f"video-1/seg-{i}.m4s", b"s")
    playlists = ["manifest.mpd", "video-1.m3u8", "video-2.m3u8", "audio-3.m3u8"]
    for name in [*playlists, "master.m3u8"]:
        sink.put(name, name.encode())
    sink.commit()
    spans = {p.rsplit("/", 1)[-1]: t for p, t in store.spans.items()}
    last_segment = max(end for name, (_, end) in spans.items() if name.endswith(".m4s"))
    assert all(spans[n][0] >= last_segment for n in [*playlists, "master.m3u8"])
    assert spans["master.m3u8"][0] >= max(spans[n][1] for n in playlists)
    # Side by side: every playlist's PUT began before the first of them was answered.
    assert max(spans[n][0] for n in playlists) < min(spans[n][1] for n in playlists)
    assert store.objects["/videos/t/1/master.m3u8"] == b"master.m3u8"


def test_one_at_a_time_when_asked(store):
    sink = _sink(store, max_in_flight=1)
    for i in range(4):
        sink.put(f"a/seg-{i}.m4s", b"x")
    sink.commit()
    assert store.most_in_flight == 1 and len(store.objects) == 4


def test_a_failed_put_fails_the_run_and_the_abort_deletes_everything_sent(store):
    store.fail = "seg-3.m4s"
    sink = _sink(store, max_in_flight=4)
    with pytest.raises(S3SinkError, match="HTTP 500"):
        for i in range(40):
            sink.put(f"v/seg-{i}.m4s", b"y" * 100)
        sink.commit()
    sink.abort()
    assert store.objects == {}
    deleted = {p for m, p in store.events if m == "DELETE"}
    assert "/videos/t/1/v/seg-3.m4s" in deleted  # (its PUT may have landed for all the sink knew)
    assert not any(p.endswith(".mpd") for _, p in store.events)
