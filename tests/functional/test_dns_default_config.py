"""The ``[dns]`` of the shipped cluster.toml, started by ``headwater up`` as an operator would: a
copy holding its ``[cluster]`` table and everything of the GeoDNS (ports moved to free ones,
DNSSEC turned on), and nothing else, so ``up`` starts the dns daemon alone (two workers). The
issue's ``dig`` lines answer, the signed SOA validates with the DS ``headwater dns ds`` prints,
and ``up`` made the cluster secret the DNSSEC key is sealed with although no RPC role runs."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import httpx
import pytest

from headwater.config import load

from .dns_harness import HEADWATER, delv_validate, free_port, headwater_up

pytestmark = pytest.mark.timeout(60)

SHIPPED = Path(__file__).resolve().parents[2] / "cluster.toml"


def dns_only_copy(folder: Path, port: int, admin_port: int) -> Path:
    text = SHIPPED.read_text()
    cluster = text[:text.index("\n[objstore]\n")]
    start = text.index("\n# The GeoDNS")
    dns_part = text[start:]
    # up to the first table of another daemon (the edge's follow the GeoDNS's)
    other = re.search(r"(?m)^(?:#[^\n]*\n)*\[\[?(?!\[)(?!dns[.\]])", dns_part)
    if other:
        dns_part = dns_part[:other.start()]
    dns_part = re.sub(r"(?m)^port = 5353$", f"port = {port}", dns_part, count=1)
    dns_part = re.sub(r"(?m)^admin_port = 9353$", f"admin_port = {admin_port}", dns_part, count=1)
    dns_part = dns_part.replace("[dns.dnssec]\nenabled = false", "[dns.dnssec]\nenabled = true")
    # The shipped [[dns.pops]] take their addresses, places and health URLs from the [[edge]]
    # POPs, which this copy leaves out (so that `up` starts the DNS alone): spell them out, as
    # the shipped file resolves them.
    for pop in load(SHIPPED).dns.steering.pops:
        head = f'[[dns.pops]]\nname = "{pop.name}"\n'
        assert head in dns_part, pop.name
        dns_part = dns_part.replace(head, head + f"ipv4 = {list(pop.ipv4)}\nlat = {pop.lat}\nlon = {pop.lon}\n"
                                                 f'region = "{pop.region}"\nhealthz = "{pop.healthz}"\n')
    assert f"port = {port}" in dns_part and "[dns.dnssec]\nenabled = true" in dns_part
    path = folder / "cluster.toml"
    path.write_text(cluster + "\n" + dns_part)
    return path


def dig(port: int, *args: str) -> str:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=2", *args],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_headwater_up_serves_the_shipped_dns_config(tmp_path):
    port, admin_port = free_port(), free_port()
    path = dns_only_copy(tmp_path, port, admin_port)
    cfg = load(path)
    assert [d.id for d in cfg.daemons()] == ["dns-1"] and cfg.dns.workers == 2
    with headwater_up(path, tmp_path / "up.log", timeout=40, stop=signal.SIGTERM, stop_wait=20):
        said = (tmp_path / "up.log").read_text()
        assert "created the cluster secret" in said and f"DNS           127.0.0.1:{port} UDP and TCP" in said
        assert "DNSSEC        signed online" in said and "headwater dns ds" in said
        assert httpx.get(f"http://127.0.0.1:{admin_port}/healthz").json()["signed"]

        # the dig lines
        out = dig(port, "video.cdn.headwater.test", "A", "+subnet=81.2.69.0/24")
        answer = out.split("ANSWER SECTION:\n")[1].split("\n\n")[0].split()
        assert answer[:5] == ["video.cdn.headwater.test.", "30", "IN", "A", "127.0.0.1"]  # pop-1, London
        scope = re.search(r"CLIENT-SUBNET: 81\.2\.69\.0/24/(\d+)", out)
        assert scope and int(scope.group(1)) > 0, out
        assert "status: NOERROR" in dig(port, "video.cdn.headwater.test", "A", "+tcp")
        signed = dig(port, "cdn.headwater.test", "SOA", "+dnssec")
        assert "RRSIG\tSOA 13 3 300" in signed and " aa" in signed.split("flags:")[1].split(";")[0]

        ds_out = subprocess.run([HEADWATER, "dns", "ds", "-c", str(path)], capture_output=True, text=True,
                                timeout=30)
        assert ds_out.returncode == 0 and "created" not in ds_out.stderr, ds_out.stderr
        line = next(x for x in ds_out.stdout.splitlines() if "\tDS\t" in x)
        tag, algorithm, digest_type, digest = line.split("\tDS\t")[1].split()
        checked = delv_validate("127.0.0.1", port, "cdn.headwater.test.", "SOA",
                                (int(tag), int(algorithm), int(digest_type), digest), "cdn.headwater.test.", tmp_path)
        assert "; fully validated" in checked.stdout + checked.stderr, checked.stdout + checked.stderr
        origin = dns.name.from_text("cdn.headwater.test.")
        served = dns.query.udp(dns.message.make_query(origin, "DNSKEY", want_dnssec=True), "127.0.0.1",
                               port=port, timeout=2).answer[0][0]
        assert dns.dnssec.make_ds(origin, served, "SHA256").digest.hex().upper() == digest
