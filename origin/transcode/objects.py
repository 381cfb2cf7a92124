"""The few object-store calls the transcoder makes besides the packager's PUTs: fetch an upload
to a scratch file (streamed, bounded), list a prefix, delete keys, make the videos bucket.

Synchronous (``http.client`` + the kernel's SigV4 signer), as the DRM packager's S3 sink is:
the worker runs them in its job thread between blocking ffmpeg runs.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

from headwater.sigv4 import EMPTY_SHA256, sign_request

from ..errors import InvalidMedia, StoreUnavailable

__all__ = ["ObjectStore", "MAX_DELETE_KEYS"]

_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"
CHUNK = 1024 * 1024
MAX_LIST_BYTES = 8 * 1024 * 1024
#: S3's limit of keys in one DeleteObjects request
MAX_DELETE_KEYS = 1000


class ObjectStore:
    """One S3 endpoint as one user; one keep-alive connection (not thread-safe)."""

    def __init__(self, endpoint: str, *, access_key: str, secret_key: str, region: str,
                 ssl_context: ssl.SSLContext | None = None, timeout_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        split = urlsplit(endpoint)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"{endpoint!r}: expected http(s)://host:port")
        self._https = split.scheme == "https"
        self._host, self._port = split.hostname, split.port or (443 if self._https else 80)
        self._host_header = split.netloc
        self._access, self._secret, self._region = access_key, secret_key, region
        self._ssl, self._timeout, self._clock = ssl_context, timeout_s, clock
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- calls --------------------------------------------------------------------------------

    def download(self, bucket: str, key: str, dest: Path, *, max_bytes: int) -> int:
        """GET ``bucket/key`` into ``dest`` a chunk at a time; the size. A missing object or one
        over ``max_bytes`` is :class:`InvalidMedia` (the upload itself is wrong)."""
        resp = self._send("GET", self._path(bucket, key))
        try:
            if resp.status == 404:
                raise InvalidMedia(f"the upload s3://{bucket}/{key} is not in the store")
            if resp.status != 200:
                raise StoreUnavailable(f"GET s3://{bucket}/{key}: HTTP {resp.status} {_code(resp.read(64 * 1024))}")
            length = int(resp.getheader("content-length") or -1)
            if length > max_bytes:
                raise InvalidMedia(f"the upload is {length} bytes, more than the transcoder takes ({max_bytes})")
            got = 0
            with open(dest, "wb") as f:
                while chunk := resp.read(CHUNK):
                    got += len(chunk)
                    if got > max_bytes:
                        raise InvalidMedia(f"the upload is more than the transcoder takes ({max_bytes} bytes)")
                    f.write(chunk)
            if length >= 0 and got != length:
                raise StoreUnavailable(f"GET s3://{bucket}/{key}: {got} of {length} bytes before the connection ended")
            return got
        except BaseException:
            self.close()  # a body left unread makes the connection useless
            raise

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (ListObjectsV2, page by page); none in a bucket that does
        not exist yet (a first attempt that died before it made the bucket left nothing)."""
        token = None
        while True:
            params = {"list-type": "2", "prefix": prefix}
            if token:
                params["continuation-token"] = token
            query = urlencode(sorted(params.items()), quote_via=quote)
            resp = self._send("GET", "/" + quote(bucket, safe=""), query)
            body = resp.read(MAX_LIST_BYTES)
            if resp.status == 404 and _code(body) == "NoSuchBucket":
                return
            if resp.status != 200:
                raise StoreUnavailable(f"LIST s3://{bucket}/{prefix}: HTTP {resp.status} {_code(body)}")
            root = ET.fromstring(body)
            for c in root.iter(f"{_S3}Contents"):
                k = c.find(f"{_S3}Key")
                if k is not None and k.text:
                    yield k.text
            token = root.findtext(f"{_S3}NextContinuationToken")
            if root.findtext(f"{_S3}IsTruncated") != "true" or not token:
                return

    def delete(self, bucket: str, key: str) -> None:
        resp = self._send("DELETE", self._path(bucket, key))
        body = resp.read(64 * 1024)
        if resp.status not in (200, 204, 404):
            raise StoreUnavailable(f"DELETE s3://{bucket}/{key}: HTTP {resp.status} {_code(body)}")

    def delete_objects(self, bucket: str, keys: Sequence[str]) -> int:
        """Delete up to :data:`MAX_DELETE_KEYS` keys in one DeleteObjects request (Quiet: only
        failures are listed); how many it deleted. A key that was not there counts as deleted
        (S3's answer too). Any key the store could not delete is :class:`StoreUnavailable`."""
        if not keys:
            return 0
        if len(keys) > MAX_DELETE_KEYS:
            raise ValueError(f"{len(keys)} keys: DeleteObjects takes at most {MAX_DELETE_KEYS}")
        root = ET.Element("Delete", xmlns=_S3.strip("{}"))
        ET.SubElement(root, "Quiet").text = "true"
        for k in keys:
            ET.SubElement(ET.SubElement(root, "Object"), "Key").text = k
        body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        resp = self._send("POST", "/" + quote(bucket, safe=""), "delete=", body=body)
        answer = resp.read(MAX_LIST_BYTES)
        if resp.status != 200:
            raise StoreUnavailable(f"DeleteObjects s3://{bucket}: HTTP {resp.status} {_code(answer)}")
        failed = [e.findtext(f"{_S3}Key") for e in ET.fromstring(answer).iter(f"{_S3}Error")]
        if failed:
            raise StoreUnavailable(f"DeleteObjects s3://{bucket}: {len(failed)} of {len(keys)} keys not deleted "
                                   f"(first {failed[0]!r}: {_code(answer)})")
        return len(keys)

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every key under ``prefix`` (which must end with ``/``); how many."""
        if not prefix.endswith("/"):
            raise ValueError(f"{prefix!r}: a prefix to delete ends with /")
        keys = list(self.list_keys(bucket, prefix))
        for i in range(0, len(keys), MAX_DELETE_KEYS):
            self.delete_objects(bucket, keys[i:i + MAX_DELETE_KEYS])
        return len(keys)

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless this user has it."""
        resp = self._send("PUT", "/" + quote(bucket, safe=""))
        body = resp.read(64 * 1024)
        if resp.status != 200 and _code(body) not in ("BucketAlreadyOwnedByYou",):
            raise StoreUnavailable(f"PUT bucket {bucket}: HTTP {resp.status} {_code(body)}")

    # --- the wire -----------------------------------------------------------------------------

    @staticmethod
    def _path(bucket: str, key: str) -> str:
        return "/" + quote(f"{bucket}/{key}", safe="/-_.~")

    def _send(self, method: str, path: str, query: str = "", *, body: bytes = b"") -> http.client.HTTPResponse:
        # DeleteObjects requires Content-MD5 (signed, as the body's SHA-256 is).
        extra = (("content-md5", base64.b64encode(hashlib.md5(body).digest()).decode()),) if body else ()
        headers = dict(sign_request(method, self._host_header, path, query, access_key=self._access,
                                    secret_key=self._secret, region=self._region, now=self._clock(),
                                    extra_headers=extra,
                                    payload_sha256=hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256))
        headers.update({"Host": self._host_header, "Content-Length": str(len(body)), **dict(extra)})
        target = f"{path}?{query}" if query else path
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = (http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                          context=self._ssl or ssl.create_default_context())
                              if self._https else http.client.HTTPConnection(self._host, self._port,
                                                                              timeout=self._timeout))
            try:
                self._conn.request(method, target, body=body or None, headers=headers)
                return self._conn.getresponse()
            except (http.client.HTTPException, OSError) as e:
                # One retry on a fresh connection: the server may have closed an idle keep-alive one.
                self.close()
                if attempt:
                    raise StoreUnavailable(f"{method} {path}: {e}") from e
        raise AssertionError("unreachable")


def _code(body: bytes) -> str:
    start, end = body.find(b"<Code>"), body.find(b"</Code>")
    return body[start + 6:end].decode("ascii", "replace") if 0 <= start < end <= start + 86 else ""
