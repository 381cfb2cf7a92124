"""The durability model: the exact MTTDL solver against closed forms, monotonicity, and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from headwater.bench import durability as d

ROOT = Path(__file__).resolve().parents[2]
LAM = 1.6558e-6   # 1.44 % AFR per hour
MU = 1 / 36.0     # a 36-hour repair


def _mttdl(scheme: d.Scheme, lam: float = LAM, mu: float = MU, **kw) -> Fraction:
    return d.mttdl_hours(d.stripe_chain(scheme, disk_rate=lam, repair_rate=mu, **kw))


def test_replication_x2_matches_closed_form_exactly():
    # two-disk mirror: MTTDL = (3 lambda + mu) / (2 lambda^2)
    lam, mu = Fraction(LAM), Fraction(MU)
    assert _mttdl(d.Scheme(k=1, m=1)) == (3 * lam + mu) / (2 * lam ** 2)


def test_replication_x3_matches_closed_form_exactly():
    # three-way mirror: MTTDL = (11 lambda^2 + 4 lambda mu + mu^2) / (6 lambda^3)
    lam, mu = Fraction(LAM), Fraction(MU)
    assert _mttdl(d.Scheme(k=1, m=2)) == (11 * lam ** 2 + 4 * lam * mu + mu ** 2) / (6 * lam ** 3)


def test_single_parity_matches_raid5_formula():
    # Greenan et al.'s canonical one-failure model: ((2n - 1) lambda + mu) / (n (n - 1) lambda^2)
    lam, mu, n = Fraction(LAM), Fraction(MU), 5
    assert _mttdl(d.Scheme(k=4, m=1)) == ((2 * n - 1) * lam + mu) / (n * (n - 1) * lam ** 2)


def test_no_repair_is_the_sum_of_failure_waits():
    # without repair the time to lose m + 1 of n is sum 1 / ((n - i) lambda)
    s = d.Scheme(k=4, m=2)
    want = sum(Fraction(1) / ((s.n - i) * Fraction(LAM)) for i in range(s.m + 1))
    assert _mttdl(s, mu=0.0) == want


@pytest.mark.parametrize("k,m", [(4, 2), (8, 4), (10, 4), (17, 3)])
def test_ec_approaches_the_textbook_approximation(k, m):
    s = d.Scheme(k=k, m=m)
    exact = float(_mttdl(s))
    approx = d.mttdl_approx_hours(s, disk_rate=LAM, repair_rate=MU)
    assert exact == pytest.approx(approx, rel=1e-2)
    assert exact > approx  # the approximation drops only positive terms


def test_distinct_domains_add_to_the_fragment_failure_rate():
    s = d.Scheme(k=4, m=2)
    assert float(_mttdl(s, domain_rate=LAM / 2)) == pytest.approx(float(_mttdl(s, lam=LAM * 1.5)), rel=1e-12)


def test_shared_domains_are_worse_than_distinct_ones():
    s = d.Scheme(k=4, m=2)
    distinct = _mttdl(s, domain_rate=LAM)
    three = _mttdl(s, domain_rate=LAM, domains=3)   # two fragments per domain
    two = _mttdl(s, domain_rate=LAM, domains=2)     # three per domain: one domain loses data
    assert distinct > three > two
    assert not d.stripe_chain(s, disk_rate=LAM, repair_rate=MU, domain_rate=LAM, domains=3).birth_death


def _nines(scheme: d.Scheme, afr: float = 0.0144, mbps: float = 125.0) -> float:
    return d.evaluate(scheme, d.Repair(read_bytes_per_s=mbps * d.MB), afr=afr, disk_bytes=16 * d.TB,
                      disks=600, detect_hours=0.5).nines


def test_more_parity_more_nines():
    for k in (1, 4, 10):
        got = [_nines(d.Scheme(k=k, m=m)) for m in (1, 2, 3, 4)]
        assert got == sorted(got) and len(set(got)) == 4


def test_higher_afr_fewer_nines():
    for s in (d.Scheme(k=1, m=2), d.Scheme(k=4, m=2), d.Scheme(k=17, m=3)):
        got = [_nines(s, afr=a) for a in (0.005, 0.0144, 0.03, 0.1)]
        assert got == sorted(got, reverse=True) and len(set(got)) == 4


def test_faster_repair_more_nines():
    s = d.Scheme(k=8, m=4)
    assert _nines(s, mbps=50) < _nines(s, mbps=125) < _nines(s, mbps=1000)


def test_repair_time_reads_k_disks_and_writes_one():
    s = d.Scheme(k=4, m=2)
    assert d.repair_hours(s, disk_bytes=3600e6, read_bytes_per_s=1e6) == pytest.approx(4.0)
    assert d.repair_hours(s, disk_bytes=3600e6, read_bytes_per_s=1e9, write_bytes_per_s=1e6,
                          detect_hours=0.5) == pytest.approx(1.5)
    assert d.repair_hours(d.Scheme(k=1, m=2), disk_bytes=3600e6, read_bytes_per_s=1e6) == pytest.approx(1.0)


def test_probabilities_and_rates():
    assert d.hourly_rate(0.0144) * 8760 == pytest.approx(-math.log(1 - 0.0144))
    assert d.annual_loss(8760) == pytest.approx(1 - math.exp(-1))
    assert d.annual_loss(8.76e15) == pytest.approx(1e-12, rel=1e-9)
    assert d.cluster_annual_loss(1e-12, 100) == pytest.approx(1e-10, rel=1e-9)
    assert d.nines(1e-11) == pytest.approx(11)


def test_parse_scheme():
    assert d.parse_scheme("x3") == d.Scheme(k=1, m=2)
    assert d.parse_scheme("rep2") == d.Scheme(k=1, m=1)
    assert d.parse_scheme("EC 17+3") == d.Scheme(k=17, m=3)
    assert d.parse_scheme("4+2").name == "EC 4+2"
    assert d.Scheme(k=1, m=2).name == "replication x3"
    with pytest.raises(ValueError):
        d.parse_scheme("four")


def test_cli_runs_fast_without_measuring(tmp_path):
    out = tmp_path / "d.json"
    r = subprocess.run([sys.executable, "-m", "headwater.bench", "durability", "--repair-mbps", "125",
                        "--config", str(ROOT / "cluster.toml"), "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "nines; profiles reaching 11 nines:" in r.stdout
    assert "not measured" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["measured"] == {}
    names = [row["scheme"] for row in doc["rows"]]
    assert "replication x3" in names and "EC 17+3" in names
    assert all(row["repair_read_mbps"] == pytest.approx(125) for row in doc["rows"])
