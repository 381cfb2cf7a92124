"""Signed CDN URLs out of the box: a cluster.toml made like the shipped one (``[[cdn.keys]]``
"local" with ``private_key_file = "auto"``, trusted by the distribution) and a real ``headwater
up`` (the edge daemons as their own processes) in front of a test origin. The first start makes
the key (owner-only, in the data_dir); ``headwater cdn sign`` then prints a URL the POP serves,
while the unsigned URL, a tampered one and one signed by another key with the same id are 403.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tomllib
from pathlib import Path

import anyio
import anyio.from_thread
import httpx
import pytest
from Crypto.PublicKey import RSA

from headwater.config import load
from headwater.edge import cdnkeys
from headwater.edge.signedurl import sign_url
from tests.functional.dns_harness import HEADWATER, headwater_up
from tests.functional.edge_harness import ControlledOrigin, Obj
from tests.cluster import free_ports

pytestmark = pytest.mark.timeout(240)

SHIPPED = Path(__file__).resolve().parents[2] / "cluster.toml"

# A POP and its shield (fewer processes than edge_harness.CONFIG's five: `up` starts each).
CONFIG = """
[cluster]
name = "signing-test"
data_dir = "var"

[cdn.client_limits]
enabled = false

[[distributions]]
name = "video"
hostnames = ["video.test"]
origin = "http://127.0.0.1:{origin}"

[[edge]]
id = "pop-1"
tier = "pop"
port = {p[0]}
admin_port = {p[1]}
lat = 51.5
lon = -0.12
ram_size = "16MiB"
disk_size = "64MiB"

[[edge]]
id = "shield-1"
tier = "shield"
port = {p[2]}
admin_port = {p[3]}
disk_size = "64MiB"
"""


def signed_like_the_shipped_config(config: str) -> str:
    """``config`` with the shipped cluster.toml's signing: its [[cdn.keys]] and the video
    distribution's trusted_keys, taken from the file so the test follows it."""
    shipped = tomllib.loads(SHIPPED.read_text())
    video = next(d for d in shipped["distributions"] if d["name"] == "video")
    (key,) = shipped["cdn"]["keys"]
    assert key == {"id": "local", "private_key_file": "auto"} and video["trusted_keys"] == ["local"]
    line = 'origin = "http://127.0.0.1:{origin}"\n'
    assert line in config
    return (config.replace(line, line + 'trusted_keys = ["local"]\n', 1)
            + '\n[[cdn.keys]]\nid = "local"\nprivate_key_file = "auto"\n')


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HEADWATER, *args], capture_output=True, text=True, timeout=60)


def test_headwater_up_makes_the_key_and_cdn_sign_urls_pass_the_pop(tmp_path):
    ports = free_ports(5)
    path = tmp_path / "cluster.toml"
    path.write_text(signed_like_the_shipped_config(CONFIG).format(origin=ports[4], p=ports))
    key_file = tmp_path / "var" / "cdn" / "local.pem"
    origin = ControlledOrigin()
    origin.objects["/titles/1/a.m4s"] = Obj(b"segment bytes " * 100, [("cache-control", "max-age=60")])

    # Before the first start there is no key: signing says how to make one, and changes nothing.
    before = cli("cdn", "sign", "video", "/titles/1/a.m4s", "--expires", "1h", "-c", str(path))
    assert before.returncode == 2 and "not made yet" in before.stderr and "headwater up" in before.stderr
    assert not key_file.exists()

    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        served, _ = portal.start_task(origin.run, ports[4])
        try:
            with headwater_up(path, tmp_path / "up.log", timeout=120):
                said = (tmp_path / "up.log").read_text()
                assert f"created the CDN signing key {key_file}" in said
                assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
                assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
                # The key is made once: a later start finds it.
                assert cdnkeys.prepare(load(str(path))) == []

                out = cli("cdn", "sign", "video", "/titles/1/a.m4s", "--expires", "1h", "-c", str(path))
                assert out.returncode == 0, out.stderr
                url = httpx.URL(out.stdout.strip())
                pop = load(str(path)).daemon("pop-1")
                assert (url.host, url.port, url.path) == ("video.test", pop.port, "/titles/1/a.m4s")
                assert "Key-Pair-Id=local" in str(url)

                def get(target: str) -> httpx.Response:
                    return httpx.get(f"http://127.0.0.1:{pop.port}{target}", headers={"host": f"video.test:{pop.port}"},
                                     timeout=10)

                target = url.raw_path.decode()
                ok = get(target)
                assert ok.status_code == 200 and ok.content == b"segment bytes " * 100
                unsigned = get("/titles/1/a.m4s")
                assert unsigned.status_code == 403
                assert get(target.replace("/titles/1/a.m4s", "/titles/2/a.m4s")).status_code == 403
                impostor = sign_url(f"http://video.test:{pop.port}/titles/1/a.m4s", key_id="local",
                                    private_key=RSA.generate(2048), expires=int(url.params["Expires"]))
                assert get(httpx.URL(impostor).raw_path.decode()).status_code == 403
                assert origin.fetches["/titles/2/a.m4s"] == 0  # refused at the POP
        finally:
            served.cancel()
    assert key_file.exists() and os.stat(key_file).st_size > 1000


def test_cdn_keygen_makes_the_auto_key_and_a_new_one_to_rotate_to(tmp_path):
    ports = free_ports(5)
    path = tmp_path / "cluster.toml"
    path.write_text(signed_like_the_shipped_config(CONFIG).format(origin=ports[4], p=ports))
    made = cli("cdn", "keygen", "-c", str(path))
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"local: created {tmp_path / 'var' / 'cdn' / 'local.pem'}"
    again = cli("cdn", "keygen", "-c", str(path))
    assert again.returncode == 0 and "already there" in again.stdout
    assert not load(str(path)).cdn.keys.get("local").missing

    new = cli("cdn", "keygen", "--id", "local2", "-c", str(path))
    assert new.returncode == 0, new.stderr
    assert '[[cdn.keys]]\nid = "local2"\nprivate_key_file = "auto"' in new.stdout
    # The printed entry, added as it says, is a key the POPs can trust and the CLI signs with.
    path.write_text(path.read_text().replace('trusted_keys = ["local"]', 'trusted_keys = ["local", "local2"]')
                    + '\n[[cdn.keys]]\nid = "local2"\nprivate_key_file = "auto"\n')
    signed = cli("cdn", "sign", "video", "/titles/1/a.m4s", "--expires", "1h", "--key-id", "local2", "-c", str(path))
    assert signed.returncode == 0 and "Key-Pair-Id=local2" in signed.stdout, signed.stderr
    bad = cli("cdn", "keygen", "--id", "../x", "-c", str(path))
    assert bad.returncode == 2 and "not a key-pair id" in bad.stderr
    assert not (tmp_path / "var" / "x.pem").exists()
