"""``headwater demo``: a test title from nothing to a viewer's URL, on the running cluster.

1. ffmpeg makes ``--seconds`` of a test pattern (``testsrc2``) with a 440 Hz tone (``sine``),
   H.264/AAC in MP4, in a temporary folder;
2. a creator's token from the built-in issuer (the first sealed ``[[origin.clients]]`` entry
   with ``upload`` and ``titles:write``, as ``headwater token`` gets one);
3. the file goes up by tus 1.0 (creation, then PATCHes of ``part_size`` from the offset the
   origin acknowledged, resumed from ``HEAD`` after a dropped connection), with a progress line;
4. ``POST /api/titles`` names the upload; ``GET /api/titles/T`` is polled until ``published``
   (or ``failed``), the transcoder's progress shown;
5. it prints the title page's URL, and the web users who can sign in to watch it.

Everything goes through the origin's public HTTP interface, as any creator's tool would.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from headwater.cli import EXIT_FAILED, EXIT_OK
from headwater.cli import err as _err
from headwater.config import ConfigError, load
from headwater.sealed import SealedError

from .commands import TokenError, fetch_token, origin_url, origin_verify

__all__ = ["cmd_demo", "make_test_clip", "tus_upload"]

TUS = {"tus-resumable": "1.0.0"}


def make_test_clip(ffmpeg: str, path: Path, *, seconds: int) -> Path:
    """``seconds`` of testsrc2 (640x360, 25 fps, a keyframe a second) and a sine tone, to ``path``."""
    subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "25",
                    "-c:a", "aac", "-b:a", "96k", "-ac", "2", str(path)], check=True, timeout=600)
    return path


def tus_upload(http: Any, path: Path, token: str, *, chunk: int, progress: Any = None, attempts: int = 5) -> str:
    """Upload ``path`` to ``/uploads`` of ``http`` (an httpx.Client on the origin); the upload's
    id. A failed PATCH is retried from the offset a HEAD reports."""
    import httpx

    auth = {"authorization": f"Bearer {token}", **TUS}
    size = path.stat().st_size
    meta = f"filename {base64.b64encode(path.name.encode()).decode()}"
    r = http.post("/uploads", headers={**auth, "upload-length": str(size), "upload-metadata": meta})
    if r.status_code != 201:
        raise RuntimeError(f"tus creation: {r.status_code} {r.text[:300]}")
    url = r.headers["location"]
    offset, failures = 0, 0
    with path.open("rb") as f:
        while offset < size:
            f.seek(offset)
            body = f.read(chunk)
            try:
                r = http.patch(url, content=body, headers={**auth, "upload-offset": str(offset),
                                                           "content-type": "application/offset+octet-stream"})
                if r.status_code != 204:
                    raise RuntimeError(f"tus PATCH: {r.status_code} {r.text[:300]}")
                offset = int(r.headers["upload-offset"])
            except (httpx.HTTPError, RuntimeError):
                failures += 1
                if failures >= attempts:
                    raise
                time.sleep(min(10, 2 ** failures))
                offset = int(http.head(url, headers=auth).headers["upload-offset"])
            if progress is not None:
                progress(offset, size)
    return url.rsplit("/", 1)[1]


def _line(text: str) -> None:
    sys.stderr.write("\r" + text.ljust(60))
    sys.stderr.flush()


def cmd_demo(args: argparse.Namespace) -> int:
    import httpx

    from .auth.issuer import client_secret, user_password
    from .commands import origin_host
    from .transcode.config import default_binary

    try:
        cfg = load(args.config)
        node = origin_host(cfg)
        if not node.oauth.builtin:
            raise ConfigError("origin.oauth", "the demo gets its creator's token from the built-in issuer")
        wanted = {"upload", "titles:write"}
        clients = [c for c in node.clients if c.sealed and (args.client is None or c.id == args.client)
                   and wanted <= set(c.scopes)]
        if not clients:
            raise ConfigError("origin.clients", "no sealed client with scopes upload and titles:write"
                                                + (f" named {args.client!r}" if args.client else ""))
        client = clients[0]
        secret = client_secret(cfg, node, client)
        transcoder = getattr(cfg, "transcoder", None)
        ffmpeg = getattr(transcoder, "ffmpeg", None) or default_binary("ffmpeg")
    except (ConfigError, SealedError, OSError) as e:
        _err(str(e))
        return EXIT_FAILED
    if not 1 <= args.seconds <= 3600:
        _err("--seconds is 1..3600")
        return EXIT_FAILED
    base = origin_url(node)
    try:
        token = fetch_token(cfg, node, client.id, secret, sorted(wanted | ({"titles:read"} & set(client.scopes))))
    except TokenError as e:
        _err(str(e))
        return EXIT_FAILED
    with tempfile.TemporaryDirectory(prefix="headwater-demo-") as tmp:
        clip = Path(tmp) / "headwater-demo.mp4"
        _line(f"making a {args.seconds} s test title with {ffmpeg} ...")
        try:
            make_test_clip(ffmpeg, clip, seconds=args.seconds)
        except (OSError, subprocess.SubprocessError) as e:
            _err(f"\nffmpeg: {e}")
            return EXIT_FAILED
        with httpx.Client(base_url=base, verify=origin_verify(cfg), timeout=60.0, trust_env=False) as http:
            try:
                upload = tus_upload(http, clip, token, chunk=node.part_size,
                                    progress=lambda done, size: _line(f"uploading {done * 100 // size} % "
                                                                      f"of {size / 1e6:.1f} MB"))
                r = http.post("/api/titles", headers={"authorization": f"Bearer {token}"},
                              json={"title": args.title, "year": datetime.date.today().year,
                                    "description": f"{args.seconds} seconds of ffmpeg's testsrc2 and a 440 Hz "
                                                   "tone, made by headwater demo.", "upload": upload})
                if r.status_code not in (200, 201):
                    raise RuntimeError(f"POST /api/titles: {r.status_code} {r.text[:300]}")
                title = r.json()["id"]
                deadline = time.monotonic() + args.timeout
                while True:
                    doc = http.get(f"/api/titles/{title}", headers={"authorization": f"Bearer {token}"}).json()
                    _line(f"title {title}: {doc['state']} {doc['progress']} %")
                    if doc["state"] in ("published", "failed", "withdrawn"):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"not published after {args.timeout:.0f} s (is a transcoder running?)")
                    time.sleep(1.0)
            except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as e:
                _err(f"\n{e}")
                return EXIT_FAILED
    sys.stderr.write("\n")
    if doc["state"] != "published":
        _err(f"title {title} {doc['state']}: {doc.get('error')}")
        return EXIT_FAILED
    print(f"published: {base}/title/{title}")
    print(f"search:    {base}/?q={args.title.split()[-1].lower()}")
    for u in node.users:
        how = f"password {user_password(cfg, node, u.name)}" if u.sealed else "its own password"
        print(f"sign in as {u.name} ({' '.join(u.scopes)}): {how}")
    if node.tls_cert:
        print(f"the origin's certificate is from the cluster's local CA: trust {origin_verify_path(cfg)} "
              "in the browser (see the README)")
    return EXIT_OK


def origin_verify_path(cfg: Any) -> str:
    from headwater.localca import CA_CERT_FILE, ca_folder

    return str(ca_folder(cfg) / CA_CERT_FILE)
