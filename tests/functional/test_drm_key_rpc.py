"""Titles' content keys for transcoders on other hosts: the licence daemon's ``keys.title`` RPC.

A real ``headwater node licence`` with ``rpc_port``; the transcoder's own call
(:func:`headwater.drm.client.fetch_title_key`) asks it from this process, as a transcoder on
another host would. Covered: the key made on first use is the one the licence server then gives
an entitled player for that KID (the bytes, not just the KID), asked again it is the same key, a
scheme gets its own key, every answer is an audit line without the key; a caller with another
cluster's secret is refused before any call and no key is made; malformed arguments are refused
with ``bad_request`` and make nothing.
"""

from __future__ import annotations

import base64
import json
import secrets

import anyio
import pytest

from headwater.config import load
from headwater.drm.client import fetch_title_key
from headwater.rpc import AuthFailed, BadRequest, ClusterSecret, RpcClient, cluster_secret
from tests.cluster import free_ports
from tests.functional.licence_harness import CONFIG, cli, running_licence, unb64


@pytest.fixture(scope="module")
def licence(tmp_path_factory):
    folder = tmp_path_factory.mktemp("key-rpc")
    (rpc_port,) = free_ports(1)
    config = CONFIG.replace("[licence]\n", f"[licence]\nrpc_port = {rpc_port}\n", 1)
    with running_licence(folder, config=config) as lic:
        yield lic, load(str(lic.config)), rpc_port


def _listed(path) -> str:
    return cli(path, "keys", "list")


def test_a_transcoder_anywhere_gets_the_key_players_are_given(licence):
    lic, cfg, _ = licence
    key = fetch_title_key(cfg, "41", "cbcs")
    again = fetch_title_key(cfg, "41", "cbcs")
    other = fetch_title_key(cfg, "41", "cenc")
    assert (again.kid, again.key) == (key.kid, key.key) and len(key.key) == 16
    assert other.kid != key.kid and other.key != key.key
    listed = _listed(lic.config)
    assert key.kid.hex() in listed and other.kid.hex() in listed

    # The licence server hands an entitled player the same bytes for that KID.
    token = cli(lic.config, "entitle", "--user", "viewer", "--title", "41", "--expires", "1h").strip()
    status, _, body = lic.curl("-X", "POST", "-H", f"Authorization: Bearer {token}",
                               "-H", "Content-Type: application/json",
                               "--data", json.dumps({"kids": [_b64url(key.kid)], "type": "temporary"}))
    assert status == 200, body
    (answer,) = json.loads(body)["keys"]
    assert unb64(answer["k"]) == key.key

    served = [a for a in lic.audit() if a["outcome"] == "key_served"]
    assert [(a["titles"], a["scheme"]) for a in served] == [(["41"], "cbcs")] * 2 + [(["41"], "cenc")]
    text = (lic.folder / "var/licence/audit.log").read_text()
    assert _b64url(key.key) not in text and key.key.hex() not in text


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def test_another_clusters_secret_is_refused_before_any_call(licence):
    lic, cfg, rpc_port = licence
    before = _listed(lic.config)
    outsider = ClusterSecret.from_secret(cfg.name, secrets.token_bytes(32))

    async def ask(secret: ClusterSecret, calls: list[dict], expected: type[Exception]) -> None:
        async with RpcClient("127.0.0.1", rpc_port, secret=secret, connect_timeout=5, default_timeout=10) as c:
            for args in calls:
                with pytest.raises(expected) as e:
                    await c.call("keys.title", args)
                if expected is AuthFailed:
                    assert e.value.details.get("sent") is False  # refused before the call was sent

    anyio.run(ask, outsider, [{"title": "77", "scheme": "cbcs"}], AuthFailed)
    # Malformed calls from a node that holds the secret: refused, nothing made.
    anyio.run(ask, cluster_secret(cfg), [
        {"title": "77"}, {"title": "77", "scheme": "rot13"}, {"title": "", "scheme": "cbcs"},
        {"title": "7\x00", "scheme": "cbcs"}, {"title": "x" * 300, "scheme": "cbcs"},
        {"title": 77, "scheme": "cbcs"}, {"title": "77", "scheme": "cbcs", "kid": "00"}], BadRequest)
    assert _listed(lic.config) == before
    assert not [a for a in lic.audit() if a["outcome"] == "key_served" and a["titles"] == ["77"]]
