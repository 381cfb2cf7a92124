"""The GeoDNS signing its zone, checked by two independent validators: BIND's ``delv`` with our DS
as its only trust anchor, and dnspython's ``dns.dnssec.validate``.

One real daemon for the module: two ``headwater node`` worker processes sharing the port, with
``[dns.dnssec] enabled`` and no key yet (the workers start together and must end up with one
key). Covered: a static A, a steered A chosen by ECS (``delv`` sends no ECS, so a proxy between
it and the daemon adds the option), NXDOMAIN and NODATA proven by NSEC, a wildcard answer, and
answers tampered with on the way (the A rdata, the RRSIG) rejected by both validators; the answer
cache keeping DO and plain answers apart; a signed answer too large for the client's UDP size
truncated, then whole over TCP; ``headwater dns ds`` and ``headwater dns explain`` as the
commands an operator runs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from headwater.cli import main

from .dns_harness import (HEADWATER, NodeWorkers, StandinHealthz, UdpProxy, delv_validate, free_port, write_secret)

pytestmark = pytest.mark.timeout(60)

ZONE = "cdn.headwater.test."
ORIGIN = dns.name.from_text(ZONE)
NYC_SUBNET = "198.51.100.0"  # placed in New York by a geo rule: steering answers nyc's address
BIG = [f'"{"t" * 110} {i}"' for i in range(3)]  # a TXT RRset that fits 512 bytes unsigned, not signed


def config(folder: Path, *, port: int, admin_port: int, healthz: list[str], dnssec: bool = True) -> Path:
    records = "".join(f'[[dns.records]]\nname = "{n}"\ntype = "{t}"\nvalue = {json.dumps(v)}\n'
                      for n, t, v in [("ns1", "A", "127.0.0.1"), ("static", "A", "192.0.2.10"),
                                      ("*.wild", "A", "192.0.2.20")] + [("big", "TXT", b) for b in BIG])
    path = folder / "cluster.toml"
    path.write_text(f"""
[cluster]
name = "dns-sec"
data_dir = "var"

[dns]
id = "dns-sec"
port = {port}
admin_port = {admin_port}
workers = 2
zone = "{ZONE}"
reload_interval_seconds = 0
[dns.rrl]
enabled = false
[dns.health]
interval_seconds = 0.5
timeout_seconds = 0.5
[dns.dnssec]
enabled = {"true" if dnssec else "false"}
{records}
[[dns.steered]]
name = "video"
[[dns.pops]]
name = "lon"
ipv4 = ["192.0.2.1"]
lat = 51.5
lon = -0.12
healthz = "{healthz[0]}"
[[dns.pops]]
name = "nyc"
ipv4 = ["192.0.2.2"]
lat = 40.7
lon = -74.0
healthz = "{healthz[1]}"
[[dns.geo.rules]]
cidr = "198.51.100.0/24"
lat = 40.7
lon = -74.0
""")
    return path


def headwater(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it: a process of its own."""
    out = subprocess.run([HEADWATER, *args], capture_output=True, text=True, timeout=30)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def headwater_here(capsys, *args: str) -> SimpleNamespace:
    """The same command run in this process (its variants, without a second of start-up each)."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def parse_ds(text: str) -> tuple[int, int, int, str]:
    line = next(x for x in text.splitlines() if not x.startswith(";") and "\tDS\t" in x)
    tag, algorithm, digest_type, digest = line.split("\tDS\t")[1].split()
    return int(tag), int(algorithm), int(digest_type), digest


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dns-sec")
    pops = [StandinHealthz(), StandinHealthz()]
    port, admin_port = free_port(), free_port()
    path = config(folder, port=port, admin_port=admin_port, healthz=[p.url for p in pops])
    write_secret(folder / "var")
    # The two workers and `headwater dns ds` start together, none finding a key: all three must
    # end up with the one key that was published first.
    workers = NodeWorkers(path, "dns-sec", 2, admin_port)
    ds_command = subprocess.Popen([HEADWATER, "dns", "ds", "-c", str(path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    proxy = UdpProxy(("127.0.0.1", port))
    try:
        out, err = ds_command.communicate(timeout=30)
        assert ds_command.returncode == 0, out + err
        ds = parse_ds(out)
        workers.wait_ready()
        yield SimpleNamespace(folder=folder, path=path, port=port, admin_port=admin_port, ds=ds, proxy=proxy)
    finally:
        proxy.close()
        workers.stop()
        for p in pops:
            p.close()


def query(d, name: str, qtype: str, *, do: bool = True, ecs: str | None = None, payload: int = 1232,
          tcp: bool = False) -> dns.message.Message:
    options = [dns.edns.ECSOption(ecs, 24)] if ecs else []
    q = dns.message.make_query(name, qtype, use_edns=0, want_dnssec=do, payload=payload, options=options)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, "127.0.0.1", port=d.port, timeout=2)


def keyring(d) -> dict:
    msg = query(d, ZONE, "DNSKEY")
    return {ORIGIN: msg.find_rrset(msg.answer, ORIGIN, dns.rdataclass.IN, dns.rdatatype.DNSKEY)}


def validate_sections(msg: dns.message.Message, keys: dict) -> int:
    """Validate every RRset of the answer and authority sections with its RRSIG (dnspython);
    how many were validated. Raises dns.dnssec.ValidationFailure for a bad one."""
    checked = 0
    for section in (msg.answer, msg.authority):
        sigs = {(r.name, r.covers): r for r in section if r.rdtype == dns.rdatatype.RRSIG}
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            assert (rrset.name, rrset.rdtype) in sigs, f"{rrset.name} {rrset.rdtype} is unsigned"
            dns.dnssec.validate(rrset, sigs[(rrset.name, rrset.rdtype)], keys)
            checked += 1
    return checked


# (qname, qtype, ECS, what delv must say, the record it must show)
CASES = {
    "static A": ("static.cdn.headwater.test.", "A", None, "; fully validated", "A\t192.0.2.10"),
    "steered A with ECS": ("video.cdn.headwater.test.", "A", NYC_SUBNET, "; fully validated", "A\t192.0.2.2"),
    "NXDOMAIN": ("nope.cdn.headwater.test.", "A", None, "; negative response, fully validated", "NXDOMAIN"),
    "NODATA": ("static.cdn.headwater.test.", "AAAA", None, "; negative response, fully validated", "NXRRSET"),
    "wildcard": ("Any.Wild.cdn.headwater.test.", "A", None, "; fully validated", "A\t192.0.2.20"),
}


def add_ecs(subnet: str):
    def rewrite(wire: bytes) -> bytes:
        q = dns.message.from_wire(wire)
        q.use_edns(0, q.ednsflags, q.payload, options=[dns.edns.ECSOption(subnet, 24)])
        return q.to_wire()
    return rewrite


@pytest.mark.parametrize("case", CASES)
def test_delv_validates_with_our_ds_as_trust_anchor(signed, tmp_path, case):
    qname, qtype, ecs, verdict, shown = CASES[case]
    signed.proxy.on_query = add_ecs(ecs) if ecs else (lambda b: b)
    signed.proxy.on_answer = lambda b: b
    out = delv_validate("127.0.0.1", signed.proxy.port, qname, qtype, signed.ds, ZONE, tmp_path)
    text = out.stdout + out.stderr
    assert verdict in text, text
    assert shown in text, text
    if "A\t" in shown:
        assert "RRSIG\tA 13" in text, text


def flip_address(wire: bytes) -> bytes:
    """192.0.2.10 in the A rdata becomes 192.0.2.11."""
    assert wire.count(bytes([192, 0, 2, 10])) == 1
    return wire.replace(bytes([192, 0, 2, 10]), bytes([192, 0, 2, 11]))


def flip_signature(wire: bytes) -> bytes:
    """One bit of the A RRset's RRSIG signature flipped (its last octet)."""
    msg = dns.message.from_wire(wire)
    sigs = [r for r in msg.answer if r.rdtype == dns.rdatatype.RRSIG and r.covers == dns.rdatatype.A]
    if not sigs:
        return wire  # the DNSKEY exchange delv makes first passes untouched
    signature = sigs[0][0].signature
    at = wire.index(signature) + len(signature) - 1
    return wire[:at] + bytes([wire[at] ^ 0x01]) + wire[at + 1:]


@pytest.mark.parametrize("tamper", [flip_address, flip_signature])
def test_a_tampered_answer_is_rejected_by_delv_and_dnspython(signed, tmp_path, tamper):
    signed.proxy.on_query = lambda b: b
    signed.proxy.on_answer = lambda b: tamper(b) if b"static" in b.lower() else b
    out = delv_validate("127.0.0.1", signed.proxy.port, "static.cdn.headwater.test.", "A", signed.ds, ZONE, tmp_path)
    text = out.stdout + out.stderr
    assert "resolution failed: RRSIG failed to verify" in text and "fully validated" not in text, text
    # the same bytes, seen by dnspython
    q = dns.message.make_query("static.cdn.headwater.test.", "A", want_dnssec=True)
    msg = dns.query.udp(q, "127.0.0.1", port=signed.proxy.port, timeout=2)
    with pytest.raises(dns.dnssec.ValidationFailure):
        validate_sections(msg, keyring(signed))


@pytest.mark.parametrize("case", CASES)
def test_dnspython_validates_the_same_answers(signed, case):
    qname, qtype, ecs, _, _ = CASES[case]
    keys = keyring(signed)
    msg = query(signed, qname, qtype, ecs=ecs)
    assert msg.flags & dns.flags.AA and not msg.flags & dns.flags.AD  # authoritative, never "authenticated"
    assert validate_sections(msg, keys) >= 1
    q = dns.name.from_text(qname)
    nsecs = [(r.name, r[0].next, r[0].windows) for r in msg.authority if r.rdtype == dns.rdatatype.NSEC]
    if case == "NXDOMAIN":
        assert msg.rcode() == dns.rcode.NXDOMAIN and not msg.answer
        assert any(owner < q < nxt for owner, nxt, _ in nsecs), nsecs
        wildcard = dns.name.from_text("*", q.parent())
        assert any(owner < wildcard < nxt for owner, nxt, _ in nsecs), nsecs
    elif case == "NODATA":
        assert msg.rcode() == dns.rcode.NOERROR and not msg.answer
        [(owner, _, windows)] = nsecs
        types = {w * 256 + i * 8 + b for w, bitmap in windows for i, octet in enumerate(bitmap)
                 for b in range(8) if octet & (0x80 >> b)}
        assert owner == q and dns.rdatatype.A in types and dns.rdatatype.AAAA not in types
    else:
        assert msg.rcode() == dns.rcode.NOERROR and not nsecs
        [rrset] = [r for r in msg.answer if r.rdtype == dns.rdatatype.from_text(qtype)]
        expected = {"steered A with ECS": "192.0.2.2", "wildcard": "192.0.2.20"}.get(case, "192.0.2.10")
        assert [r.address for r in rrset] == [expected]
        if ecs:
            [opt] = [o for o in msg.options if isinstance(o, dns.edns.ECSOption)]
            assert opt.scopelen > 0


def test_the_workers_share_one_key_and_the_ds_commits_to_it(signed):
    # signed.ds is what `headwater dns ds` printed, started with the workers
    keys = list((signed.folder / "var" / "dns-sec" / "keys").iterdir())
    assert [k.name for k in keys] == ["cdn.headwater.test.+013.csk.sealed"]
    assert keys[0].stat().st_mode & 0o077 == 0
    # queries from fresh source ports land on both workers (SO_REUSEPORT): one DNSKEY throughout
    served = {query(signed, ZONE, "DNSKEY").answer[0].to_text() for _ in range(30)}
    assert len(served) == 1
    dnskey = keyring(signed)[ORIGIN][0]
    ds = dns.dnssec.make_ds(ORIGIN, dnskey, "SHA256")
    assert (ds.key_tag, ds.algorithm, ds.digest_type, ds.digest.hex().upper()) == signed.ds
    health = httpx.get(f"http://127.0.0.1:{signed.admin_port}/healthz").json()
    assert health["signed"] == {ZONE: ds.key_tag}
    metrics = httpx.get(f"http://127.0.0.1:{signed.admin_port}/metrics").text
    made = [line for line in metrics.splitlines()
            if line.startswith("headwater_dns_dnssec_signatures{") and 'what="made"' in line]
    assert len(made) == 2 and sum(float(line.split()[-1]) for line in made) >= 1  # a series per worker



def test_do_and_plain_answers_are_cached_apart(signed):
    for _ in range(3):  # the second round on comes from the workers' answer caches
        plain = query(signed, "static.cdn.headwater.test.", "A", do=False)
        assert [r.rdtype for r in plain.answer] == [dns.rdatatype.A]
        signed_msg = query(signed, "static.cdn.headwater.test.", "A", do=True)
        assert sorted(r.rdtype for r in signed_msg.answer) == [dns.rdatatype.A, dns.rdatatype.RRSIG]
        no_edns = dns.query.udp(dns.message.make_query("static.cdn.headwater.test.", "A", use_edns=False),
                                "127.0.0.1", port=signed.port, timeout=2)
        assert [r.rdtype for r in no_edns.answer] == [dns.rdatatype.A]


def test_a_signed_answer_too_big_for_udp_is_truncated_then_whole_over_tcp(signed):
    keys = keyring(signed)
    unsigned = query(signed, "big.cdn.headwater.test.", "TXT", do=False, payload=512)
    assert not unsigned.flags & dns.flags.TC and len(unsigned.answer[0]) == len(BIG)
    small = query(signed, "big.cdn.headwater.test.", "TXT", payload=512)
    assert small.flags & dns.flags.TC
    whole = query(signed, "big.cdn.headwater.test.", "TXT", tcp=True)
    assert not whole.flags & dns.flags.TC and len(whole.answer[0]) == len(BIG) and len(whole.to_wire()) > 512
    assert validate_sections(whole, keys) == 1
    dig = subprocess.run(["dig", "@127.0.0.1", "-p", str(signed.port), "+dnssec", "+bufsize=512", "+tries=1",
                          "big.cdn.headwater.test", "TXT"], capture_output=True, text=True, timeout=20)
    assert "Truncated, retrying in TCP mode" in dig.stdout and "RRSIG\tTXT 13" in dig.stdout, dig.stdout


def test_dns_explain_uses_the_running_daemons_health(signed, tmp_path, capsys):
    out = headwater("dns", "explain", "198.51.100.7", "--json", "-c", str(signed.path))
    report = json.loads(out.stdout)
    assert report["health_source"] == "daemon" and report["answer"]["A"]["addresses"] == ["192.0.2.2"]
    assert {p["name"]: p["health"] for p in report["pops"]} == {"lon": "up", "nyc": "up"}
    text = headwater_here(capsys, "dns", "explain", "198.51.100.7", "--name", "video", "-c", str(signed.path))
    assert text.returncode == 0 and "health: daemon" in text.stdout and "192.0.2.2" in text.stdout
    # no daemon: every POP shown as up, and said so
    alone = tmp_path / "alone"
    alone.mkdir()
    path = config(alone, port=free_port(), admin_port=free_port(), healthz=["http://127.0.0.1:1/healthz"] * 2)
    out = headwater_here(capsys, "dns", "explain", "198.51.100.7", "--json", "-c", str(path))
    report = json.loads(out.stdout)
    assert report["health_source"].startswith("none") and "every POP is shown as up" in out.stderr
    assert {p["health"] for p in report["pops"]} == {"unknown"} and all(p["up"] for p in report["pops"])
    assert report["answer"]["A"]["addresses"] == ["192.0.2.2"]
    bad = headwater_here(capsys, "dns", "explain", "not-an-ip", "-c", str(path))
    assert bad.returncode == 2 and "not-an-ip" in bad.stderr
    unknown = headwater_here(capsys, "dns", "explain", "198.51.100.7", "--name", "audio", "-c", str(path))
    assert unknown.returncode == 2 and "audio is not a steered name" in unknown.stderr


def test_dns_ds_creates_the_key_the_daemon_would_and_refuses_when_off(tmp_path, capsys):
    path = config(tmp_path, port=free_port(), admin_port=free_port(), healthz=["http://127.0.0.1:1/healthz"] * 2)
    # a signing DNS needs the cluster secret its keys are sealed with: `node` refuses to start without
    refused = headwater_here(capsys, "node", "dns-sec", "-c", str(path))
    assert refused.returncode == 2 and "cluster.secret" in refused.stderr, refused.stderr
    first = headwater_here(capsys, "dns", "ds", "-c", str(path))
    assert first.returncode == 0
    assert "created the DNSSEC key" in first.stderr and "created the cluster secret" in first.stderr
    assert (tmp_path / "var" / "cluster.secret").exists()
    assert (tmp_path / "var" / "dns-sec" / "keys" / "cdn.headwater.test.+013.csk.sealed").exists()
    again = headwater_here(capsys, "dns", "ds", "-c", str(path))
    assert parse_ds(again.stdout) == parse_ds(first.stdout) and "created" not in again.stderr
    assert "\tDNSKEY\t257 3 13 " in again.stdout
    path.write_text(path.read_text().replace("[dns.dnssec]\nenabled = true", "[dns.dnssec]\nenabled = false"))
    off = headwater_here(capsys, "dns", "ds", "-c", str(path))
    assert off.returncode == 1 and "DNSSEC is off" in off.stderr
