"""The object-store sink: a packaging run's files PUT into an S3 bucket under a prefix.

S3 has no atomic rename of a set of objects, so "nothing visible before commit" is kept the way
packagers that publish to S3 keep it: segments and init segments are uploaded as they are made
(a title of hours never waits in memory or on disk), but the manifests — the only files a
player starts from — are held back and uploaded by :meth:`S3Sink.commit`, after every segment
they name is durable in the store. :meth:`S3Sink.abort` deletes what the run uploaded, so a
failed run leaves neither a playable title nor orphaned segments (a failed delete is reported,
never silently left).

Segments are PUT ``max_in_flight`` at a time (each on its own keep-alive connection, from a
small thread pool) while the packager makes the next ones: one PUT at a time left the store's
gateway and nodes idle for a round trip per file, and was a third of the pipeline's time around
ffmpeg on a short title. ``put`` blocks only when that many are in flight (so at most that many
files' bytes are held), a failed PUT fails the next ``put``, and ``commit`` waits for every
segment before the first manifest goes up; the manifests then go up side by side too, all but
the last one put (the HLS master, which names the others), which follows them.

Why the standard library's ``http.client`` and the kernel's SigV4 signer rather than boto3:
boto3 is a test dependency only (tens of MB), the packager sends nothing but single PUTs and
DELETEs of files of a few MB, and the signer is the one the edge's shield already uses.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from headwater.sigv4 import sign_request

from ..errors import DrmError
from .sink import check_name

__all__ = ["S3Target", "S3Sink", "S3SinkError", "parse_s3_url", "content_type", "cache_control"]

#: Files a player starts from: uploaded only at commit, after every segment they name.
MANIFEST_SUFFIXES = (".mpd", ".m3u8")

_CONTENT_TYPES = {
    ".mpd": "application/dash+xml",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".ts": "video/mp2t",
    ".key": "application/octet-stream",
}


class S3SinkError(DrmError):
    """The object store refused or failed a PUT or DELETE of the packaging run."""

    http_status = 502
    code = "store_error"


def content_type(name: str) -> str:
    """The Content-Type a file of the packaged title is served with."""
    for suffix, ctype in _CONTENT_TYPES.items():
        if name.endswith(suffix):
            return ctype
    return "application/octet-stream"


def cache_control(name: str) -> str:
    """Segments never change under their name (a re-package writes new ones), so the CDN may
    keep them for a year; a manifest may be re-published, so it is kept for a minute."""
    if name.endswith(MANIFEST_SUFFIXES):
        return "public, max-age=60"
    return "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class S3Target:
    """Where and as whom: ``endpoint`` is ``http(s)://host:port`` of the S3 gateway."""

    endpoint: str
    bucket: str
    prefix: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` → (bucket, ``some/prefix/``); the prefix, when not empty,
    ends with ``/`` so file names join under it."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{url!r}: expected s3://BUCKET[/prefix/]")
    prefix = parts.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parts.netloc, prefix


#: Segment PUTs in flight at once, by default. A PUT waits mostly on the store (its fragments
#: written and fsynced on k+m nodes), not on this process (packaging a 30 s 720p ladder took
#: 0.3 CPU-s here): packaging it into a local cluster took 3.1 s with 4 in flight, 2.6 s with
#: 8, 2.2 s with 16 (medians of 3 on a loaded 2-core machine). 8 holds at most 8 files' bytes.
MAX_IN_FLIGHT = 8


class S3Sink:
    """A :class:`~headwater.drm.package.sink.SegmentSink` over the S3 API (``max_in_flight``
    PUTs at once, each thread with its keep-alive connection; ``timeout_s`` bounds every
    request's connect and each read). Not for use from several threads at once."""

    def __init__(self, target: S3Target, *, ssl_context: ssl.SSLContext | None = None,
                 timeout_s: float = 60.0, clock=time.time, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.target = target
        split = urlsplit(target.endpoint)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"{target.endpoint!r}: expected http(s)://host:port")
        self._https = split.scheme == "https"
        self._host = split.hostname
        self._port = split.port or (443 if self._https else 80)
        self._host_header = split.netloc
        self._ssl = ssl_context
        self._timeout = timeout_s
        self._clock = clock
        self._local = threading.local()  # each sending thread's connection
        self._conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._uploaded: list[str] = []
        self._held: dict[str, bytes] = {}
        self._max_in_flight = max(1, max_in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[Future[None]] = set()

    # --- the sink -------------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        check_name(name)
        if name.endswith(MANIFEST_SUFFIXES):
            self._held[name] = bytes(data)
            return
        self._reap(block=len(self._pending) >= self._max_in_flight)
        if self._max_in_flight == 1:
            self._put(name, data)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_in_flight, thread_name_prefix="s3sink")
        self._pending.add(self._pool.submit(self._put, name, bytes(data)))

    def _reap(self, *, block: bool = False, everything: bool = False) -> None:
        """Collect finished PUTs (waiting for one with ``block``, for all with ``everything``)
        and raise the first failure among them, once whatever else was in flight has landed
        or failed too (so that an abort sees every name that may exist)."""
        if not self._pending:
            return
        if everything:
            finished = wait(self._pending).done
            self._pending = set()
        else:
            finished, self._pending = wait(self._pending, timeout=None if block else 0,
                                           return_when=FIRST_COMPLETED)
        errors = [e for e in (f.exception() for f in finished) if e is not None]
        if errors:
            wait(self._pending)
            self._pending = set()
            raise errors[0]

    def commit(self) -> None:
        self._reap(everything=True)  # every segment is durable before any manifest names it
        held = list(self._held.items())
        # The manifests side by side, but the last one put after the others: the packager puts
        # the HLS master last, and it names the media playlists. One at a time, the commit was
        # a round trip to the store per manifest after the last segment.
        if len(held) > 1 and self._max_in_flight > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_in_flight, thread_name_prefix="s3sink")
            for name, data in held[:-1]:
                self._reap(block=len(self._pending) >= self._max_in_flight)
                self._pending.add(self._pool.submit(self._put, name, data))
            self._reap(everything=True)
            held = held[-1:]
        for name, data in held:
            self._put(name, data)
        self._held.clear()
        self._uploaded.clear()
        self._close()

    def abort(self) -> None:
        self._held.clear()
        try:
            self._reap(everything=True)  # what is in flight lands (or fails) before the deletes
        except (S3SinkError, OSError):
            pass
        failed: list[str] = []
        for name in reversed(self._uploaded):
            try:
                self._request("DELETE", name, b"", ok=(200, 204, 404))
            except (S3SinkError, OSError):
                failed.append(name)
        self._uploaded.clear()
        self._close()
        if failed:
            raise S3SinkError(f"aborted, but {len(failed)} uploaded file(s) could not be deleted: "
                              + ", ".join(failed[:5]))

    # --- requests -------------------------------------------------------------------------------

    @property
    def uploaded(self) -> tuple[str, ...]:
        """Names uploaded since the last commit or abort (manifests are not, until commit)."""
        with self._lock:
            return tuple(self._uploaded)

    def _put(self, name: str, data: bytes) -> None:
        headers = (("content-type", content_type(name)), ("cache-control", cache_control(name)))
        try:
            self._request("PUT", name, data, headers=headers, ok=(200,))
        finally:
            # Counted even when the answer was lost: the object may exist, and abort deletes it
            # (a 404 there is fine).
            with self._lock:
                self._uploaded.append(name)

    def _path(self, name: str) -> str:
        return "/" + quote(f"{self.target.bucket}/{self.target.prefix}{name}", safe="/-_.~")

    def _request(self, method: str, name: str, body: bytes, *, headers: tuple[tuple[str, str], ...] = (),
                 ok: tuple[int, ...]) -> None:
        path = self._path(name)
        signed = sign_request(method, self._host_header, path, "", access_key=self.target.access_key,
                              secret_key=self.target.secret_key, region=self.target.region,
                              now=self._clock(), extra_headers=headers,
                              payload_sha256=hashlib.sha256(body).hexdigest())
        all_headers = {"Host": self._host_header, "Content-Length": str(len(body)), **dict(headers), **dict(signed)}
        # One retry on a fresh connection: a keep-alive connection the server closed while idle
        # fails on its next request without the request having been processed.
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=all_headers)
                resp = conn.getresponse()
                text = resp.read(64 * 1024)
                status = resp.status
            except (http.client.HTTPException, OSError) as e:
                self._drop()
                if attempt:
                    raise S3SinkError(f"{method} {path}: {e}") from e
                continue
            if resp.will_close:
                self._drop()
            if status not in ok:
                raise S3SinkError(f"{method} {path}: HTTP {status} {_s3_code(text)}")
            return

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                   context=self._ssl or ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _drop(self) -> None:
        """This thread's connection, after a failure or a server's close."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    def _close(self) -> None:
        """Every connection, and the pool's threads (the run is over)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


def _s3_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 error body, for the message (the body itself may be anything)."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    if start < 0 or end < 0 or end - start > 80:
        return ""
    return body[start + 6:end].decode("ascii", "replace")
