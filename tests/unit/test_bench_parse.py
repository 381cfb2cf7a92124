"""The bench's pure parts: report maths, table layout, cluster.toml rewriting, SigV4, iperf3 JSON."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from headwater import config as hwconfig
from headwater.bench import ceilings, objstore
from headwater.bench.load import Batch, sign_v4
from headwater.bench.peers import rewrite_cluster_toml

ROOT = Path(__file__).resolve().parents[2]


def test_ratio_and_goals():
    assert objstore.ratio(300.0, 100.0) == pytest.approx(3.0)
    assert objstore.ratio(None, 100.0) is None
    assert objstore.ratio(1.0, 0.0) is None
    get = next(r for r in objstore.ROWS if r.key == "get_big_8")
    assert objstore.goal_met(get, 300.0, 100.0) is True
    assert objstore.goal_met(get, 299.0, 100.0) is False
    assert objstore.goal_met(get, 199.0, None) is None
    rss = next(r for r in objstore.ROWS if r.key == "rss")
    assert objstore.goal_met(rss, 120.0, None) is True
    assert objstore.goal_met(rss, 300.0, 50.0) is False
    assert rss.goal_text == "< 300 MiB"


def test_report_rows_and_table():
    targets = {
        "ours": {"results": {"put_big_1": {"value": 150.0}, "rss": {"value": 90.0}}},
        "swift": {"results": {"put_big_1": {"value": 100.0}, "rss": {"value": 200.0}}},
    }
    ceils = [{"name": "fsync'd writes", "value": 250.0, "unit": "MB/s", "how": "x"}]
    rows = {r["key"]: r for r in objstore.report_rows(targets, ceils)}
    assert rows["put_big_1"]["ratio"] == pytest.approx(1.5)
    assert rows["put_big_1"]["goal_met"] is True
    assert rows["put_big_1"]["ceiling"] == "fsync'd writes 250 MB/s"
    assert rows["get_big_1"]["ratio"] is None and rows["get_big_1"]["goal_met"] is None
    table = objstore.render_table(["a", "bb"], [["x", "1.50x"], ["longer", "12.00x"]]).splitlines()
    assert len(table[1]) == len(table[2]) == len(table[3])  # rows padded to the separator's width
    assert table[2].endswith(" 1.50x")  # numbers right-aligned


def test_best_pass_and_first_pass_ratio():
    a = {"value": 700.0, "server_cpu_s": {"gateway": 1.0}}
    b = {"value": 900.0, "server_cpu_s": {"gateway": 0.8}}
    assert objstore.best_pass([a]) is a  # one pass: as it was, no "passes"
    best = objstore.best_pass([a, b, {"value": None}])
    assert best["value"] == 900.0 and best["server_cpu_s"] == {"gateway": 0.8}
    assert best["passes"] == [700.0, 900.0, None]
    assert objstore.best_pass([{"value": None}, {"value": None}])["value"] is None
    targets = {"ours": {"description": "ours", "results": {"get_big_8": {"value": 900.0, "passes": [360.0, 900.0]}}},
               "swift": {"description": "swift", "results": {"get_big_8": {"value": 300.0, "passes": [180.0, 300.0]}}}}
    row = next(r for r in objstore.report_rows(targets, []) if r["key"] == "get_big_8")
    assert row["ratio"] == pytest.approx(3.0) and row["first_ratio"] == pytest.approx(2.0)
    doc = {"rows": objstore.report_rows(targets, []), "targets": targets, "ceilings": [], "sizes": {}}
    text = objstore.render_report(doc)
    assert "3.00x (first pass 2.00x)" in text
    assert "Headwater 8 clients 360 / 900" in text and "Swift 8 clients 180 / 300" in text


def test_fmt_value():
    assert objstore.fmt_value(None, "MB/s") == "-"
    assert objstore.fmt_value(1234.4, "ops/s") == "1,234"
    assert objstore.fmt_value(0.923, "GB/s") == "0.92"
    assert objstore.fmt_value(42.25, "MB/s") == "42.2"


def test_batch_rates_count_only_successes():
    b = Batch(op="put", ops=10, errors=2, bytes=1_000_000, seconds=2.0, clients=8, client_cpu_s=1.0)
    assert b.ops_per_s == pytest.approx(4.0)
    assert b.mb_per_s == pytest.approx(4.0)
    assert b.client_cores == pytest.approx(0.5)


def test_rewrite_cluster_toml_moves_ports_and_data(tmp_path):
    text = (ROOT / "cluster.toml").read_text()
    out = rewrite_cluster_toml(text + '\n[[storage]]\nid = "extra"\nport = 9107\nadmin_port = 9117\n'
                               'data_dir = "/somewhere/else"\n', port_offset=10000, data_dir=tmp_path / "var")
    path = tmp_path / "c.toml"
    path.write_text(out)
    cfg = hwconfig.load(path)
    assert cfg.gateway.port == 19000 and cfg.gateway.admin_port == 19001
    assert {s.port for s in cfg.storage} == set(range(19101, 19108))
    assert all(d.data_dir == tmp_path / "var" / d.id for d in (*cfg.storage, *cfg.metadata))
    assert cfg.data_dir == tmp_path / "var"


def test_sign_v4_matches_aws_reference():
    # The GET Object example of the AWS S3 SigV4 documentation ("Signature Calculations for the
    # Authorization Header"), without its Range header.
    h = sign_v4(method="GET", host="examplebucket.s3.amazonaws.com", path="/test.txt",
                access_key="AKIAIOSFODNN7EXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                region="us-east-1", amz_date="20130524T000000Z", headers={"Range": "bytes=0-9"})
    assert h["Authorization"].endswith(
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert h["x-amz-content-sha256"] == hashlib.sha256(b"").hexdigest()


def test_parse_iperf3():
    doc = {"end": {"sum_received": {"bits_per_second": 8e9}}}
    assert ceilings.parse_iperf3(json.dumps(doc)) == 8e9
    with pytest.raises(ValueError):
        ceilings.parse_iperf3(json.dumps({"error": "unable to connect"}))


def test_read_timing_text_gives_each_stage_per_get_and_its_share():
    text = objstore.read_timing_text({"reads": 4, "batches": 64, "first_wait_s": 0.04, "wait_s": 0.12,
                                      "send_s": 0.24})
    assert text == ("per GET waiting on first bytes 10.0 ms (10%), nodes 30.0 ms (30%), "
                    "client 60.0 ms (60%)")
    assert "no GETs" in objstore.read_timing_text({"reads": 0})


@pytest.mark.parametrize("server", ["nginx", "thread"])
def test_s5cmd_ceiling_downloads_from_the_stub_endpoint(tmp_path, server):
    from headwater.bench.load import find_s5cmd
    if server == "nginx" and not (shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)):
        pytest.skip("no nginx")
    c = ceilings.s5cmd_get(find_s5cmd(), tmp_path, object_bytes=8 * 1024 * 1024, count=2, repeats=2,
                           server=server)
    assert c.name == "s5cmd GET alone" and c.unit == "MB/s" and c.value > 0
    assert "client" in c.how and "s/GB" in c.how and "best of 2" in c.how
    assert ("nginx" in c.how) == (server == "nginx")


def test_free_ports_pick_from_the_range_the_environment_gives(monkeypatch):
    from headwater.bench import peers

    monkeypatch.setenv(peers.PORT_RANGE_ENV, "20000-24000")
    ports = peers.free_ports(50)
    assert len(set(ports)) == 50 and all(20000 <= p < 24000 for p in ports)
    monkeypatch.setenv(peers.PORT_RANGE_ENV, "nonsense")
    assert peers._pick_range(32768) == (10000, 32768)
    monkeypatch.delenv(peers.PORT_RANGE_ENV)
    assert peers._pick_range(32768) == (10000, 32768)
    monkeypatch.setenv(peers.PORT_RANGE_ENV, "500-90000")  # clamped below the ephemeral range
    assert peers._pick_range(32768) == (1024, 32768)
