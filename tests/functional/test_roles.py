"""Roles register themselves: a role defined only in a test module is read from cluster.toml,
started by ``headwater up``, supervised (restarted after ``kill -9``), shown by ``headwater
status`` and given its own subcommand, with no change to the kernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from headwater.config import ConfigError, loads
from headwater.roles import ENV_PACKAGES, Registry, Role, RoleSet, registry
from tests.cluster import free_ports
from tests.functional.standin_role import ROLE_SET, read_beacon
from tests.functional.test_cli import REPO, child_pids, pid_alive, port_free, read_until, state, wait_for

STANDIN = "tests.functional.standin_role"


def beacon_env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    e[ENV_PACKAGES] = STANDIN
    return e


def headwater(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "headwater", *args], capture_output=True, text=True,
                          env=beacon_env(), cwd=REPO, timeout=timeout)


def write_beacons(tmp_path, extra: str = ""):
    p = free_ports(4)
    path = tmp_path / "cluster.toml"
    path.write_text(f"""
[cluster]
name = "beacons"
data_dir = "var"

[[beacon]]
id = "beacon-1"
port = {p[0]}
admin_port = {p[1]}
greeting = "hello"

[[beacon]]
id = "beacon-2"
port = {p[2]}
admin_port = {p[3]}
greeting = "bonjour"
{extra}""")
    return path, p


def test_the_registry_orders_roles_and_refuses_a_section_twice():
    reg = Registry([ROLE_SET, *registry().role_sets])
    assert reg.roles()[0].name == "beacon"  # order 5, before the metadata nodes
    assert [r.name for r in reg.roles()][1:] == ["metadata", "storage", "gateway", "repair", "dns", "origin", "edge",
                                                "licence", "transcoder"]
    twice = RoleSet(name="twice", roles=(Role(name="other", section="beacon", read=read_beacon, entry="x:y"),))
    with pytest.raises(ValueError, match="beacon"):
        Registry([ROLE_SET, twice])


def test_an_unregistered_section_is_an_unknown_key(tmp_path):
    with pytest.raises(ConfigError, match=r"beacon: unknown key"):
        loads('[[beacon]]\nid = "b"\nport = 1\nadmin_port = 2\n', path=str(tmp_path / "c.toml"))


def test_a_bad_key_in_the_standin_section_names_key_and_line(tmp_path):
    path, _ = write_beacons(tmp_path, extra='colour = "red"\n')
    line = path.read_text().splitlines().index('colour = "red"') + 1
    r = headwater("up", "-c", str(path))
    assert r.returncode == 2
    assert f"{path}:{line}: beacon[1].colour: unknown key" in r.stderr
    assert not (tmp_path / "var").exists()


def test_with_roles_keeps_only_those_roles_daemons():
    cfg = loads((REPO / "cluster.toml").read_text(), path=str(REPO / "cluster.toml"))
    store = cfg.with_roles(["metadata", "storage", "gateway", "repair"])
    assert {d.role for d in cfg.daemons()} > {d.role for d in store.daemons()} == {"metadata", "storage", "gateway", "repair"}
    assert [d.id for d in store.daemons()] == [d.id for d in cfg.daemons() if d.role in {"metadata", "storage", "gateway", "repair"}]
    assert store.objstore == cfg.objstore and store.distributions == cfg.distributions  # tables stay
    assert cfg.with_roles([]).daemons() == []
    with pytest.raises(ConfigError, match=r"roles: no role 'bogus' \(roles: metadata, storage, "):
        cfg.with_roles(["storage", "bogus"])


def test_up_roles_names_an_unknown_role_and_starts_nothing(tmp_path):
    path, _ = write_beacons(tmp_path)
    r = subprocess.run([sys.executable, "-m", "headwater", "up", "-c", str(path), "--roles", "beacon,nope"],
                       env=beacon_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "roles: no role 'nope' (roles: beacon, metadata," in r.stderr, r.stderr
    assert not (tmp_path / "var").exists()


def test_a_standin_role_is_started_supervised_and_shown(tmp_path):
    path, ports = write_beacons(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "headwater", "up", "-c", str(path)], env=beacon_env(),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        summary = read_until(proc, "Ctrl-C")
        assert "beacons is up (2 beacons)" in summary
        assert f"beacon        http://127.0.0.1:{ports[0]}/" in summary
        assert "S3 endpoint" not in summary and "EC " not in summary
        assert httpx.get(f"http://127.0.0.1:{ports[2]}/", trust_env=False).text == "bonjour from beacon-2\n"

        table = headwater("status", "-c", str(path))
        assert table.returncode == 0, table.stdout + table.stderr
        assert "beacons: 2/2 daemons healthy; 2 beacons" in table.stdout
        assert "says 'bonjour', served 1" in table.stdout
        assert "beacons: 2 answering" in table.stdout
        rows = {r["id"]: r for r in json.loads(headwater("status", "-c", str(path), "--json").stdout)}
        assert rows["beacon-1"]["role"] == "beacon" and rows["beacon-1"]["details"]["greeting"] == "hello"

        ping = headwater("beacon", "ping", "-c", str(path))
        assert ping.returncode == 0 and ping.stdout.splitlines() == ["hello from beacon-1", "bonjour from beacon-2"]

        old = child_pids(tmp_path)[("beacon-1", None)]
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (p := child_pids(tmp_path)[("beacon-1", None)]) != old and p, what="restart")
        assert pid_alive(new)
        wait_for(lambda: headwater("status", "-c", str(path)).returncode == 0, what="healthy again")
        assert [c["restarts"] for c in state(tmp_path)["children"] if c["id"] == "beacon-1"] == [1]

        all_pids = list(child_pids(tmp_path).values())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert not any(pid_alive(p) for p in all_pids)
    assert all(port_free(p) for p in ports)
