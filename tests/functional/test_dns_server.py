"""The dns daemon on loopback, driven by dig and dnspython: every record type and RCODE, EDNS and
ECS, TCP with several queries per connection, truncation then TCP fallback, hostile packets (the
server answers FORMERR or nothing, and goes on answering), hot reload under a query loop with no
query lost, SIGHUP through ``headwater node``, and /metrics.

The daemon runs in-process (``run_dns``, its role's entry point) in a thread with its own event
loop, once per module and backend, so the clients here can block as real ones do.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import httpx
import pytest
from headwater.config import load
from headwater.dns.daemon import run_dns
from headwater.runtime import backend_options

from tests.functional.dns_harness import free_port

BIG = "\n".join(f"big 300 IN TXT \"{'x' * 200} {i}\"" for i in range(12))
ZONE = """$ORIGIN files.test.
@ 300 IN SOA ns1 hostmaster 1 3600 600 86400 30
@ 300 IN NS ns1
ns1 300 IN A 192.0.2.53
www 300 IN A {address}
{big}
"""


def write_config(folder: Path, *, port: int, admin_port: int, address: str = "192.0.2.1", rrl: bool = False) -> Path:
    zone = folder / "files.zone"
    zone.write_text(ZONE.format(address=address, big=BIG))
    path = folder / "cluster.toml"
    path.write_text(f"""
[cluster]
name = "dns-test"
data_dir = "var"

[dns]
id = "dns-t"
port = {port}
admin_port = {admin_port}
workers = 1
zone = "cdn.headwater.test."
zone_files = ["files.zone"]
negative_ttl = 40
reload_interval_seconds = 0.2
tcp_idle_timeout_seconds = 2
tcp_query_timeout_seconds = 0.5
[dns.rrl]
enabled = {"true" if rrl else "false"}
responses_per_second = 5
slip = 2
[[dns.records]]
name = "ns1"
type = "A"
value = "127.0.0.1"
[[dns.records]]
name = "www"
type = "CNAME"
value = "video"
[[dns.records]]
name = "static"
type = "A"
value = "192.0.2.10"
[[dns.records]]
name = "static"
type = "AAAA"
value = "2001:db8::10"
[[dns.records]]
name = "@"
type = "TXT"
value = "\\"headwater CDN\\""
[[dns.records]]
name = "@"
type = "MX"
value = "10 mail"
[[dns.records]]
name = "_http._tcp"
type = "SRV"
value = "0 5 8081 static"
[[dns.records]]
name = "@"
type = "CAA"
value = "0 issue \\"letsencrypt.org\\""
[[dns.steered]]
name = "video"
[[dns.pops]]
name = "lon"
ipv4 = ["127.0.0.1"]
lat = 51.5
lon = -0.12
healthz = "http://127.0.0.1:1/healthz"
[[dns.pops]]
name = "nyc"
ipv4 = ["127.0.0.2"]
lat = 40.7
lon = -74.0
healthz = "http://127.0.0.1:1/healthz"
[[dns.geo.rules]]
cidr = "10.1.0.0/16"
lat = 51.0
lon = 0.0
[[dns.geo.rules]]
cidr = "10.2.0.0/16"
lat = 41.0
lon = -73.0
""")
    return path


class Daemon:
    """run_dns in a thread with its own event loop on ``backend``."""

    def __init__(self, path: Path, backend: str) -> None:
        self.cluster = load(path)
        self.cfg = self.cluster.dns
        self.backend = backend
        self.server = None
        self._ready = threading.Event()
        self._stop: anyio.Event | None = None
        self._token = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._stop = anyio.Event()
            self._token = anyio.lowlevel.current_token()
            async with anyio.create_task_group() as tg:
                self.server = await tg.start(run_dns, self.cluster, self.cfg)
                self._ready.set()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        try:
            anyio.run(main, backend=self.backend, backend_options=backend_options(self.backend))
        except BaseException as e:  # noqa: BLE001 — reported by start()
            self._error = e
            self._ready.set()

    def start(self) -> "Daemon":
        self._thread.start()
        assert self._ready.wait(30), "the daemon did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        anyio.from_thread.run_sync(self._stop.set, token=self._token)
        self._thread.join(10)
        assert self._error is None, self._error


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def daemon(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"dns-{request.param}")
    d = Daemon(write_config(folder, port=free_port(), admin_port=free_port()), request.param).start()
    d.folder = folder
    yield d
    d.stop()


def dig(d: Daemon, *args: str) -> str:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(d.cfg.port), "+tries=1", "+time=2", *args],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def udp(d: Daemon, wire: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, ("127.0.0.1", d.cfg.port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def ask(d: Daemon, name: str, qtype: str = "A", **kw) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, qtype, **kw), "127.0.0.1", port=d.cfg.port, timeout=2)


def still_answers(d: Daemon) -> None:
    msg = ask(d, "static.cdn.headwater.test.")
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer[0][0].address == "192.0.2.10"


@pytest.mark.parametrize("qtype,expected", [
    ("A", "static.cdn.headwater.test. 300 IN A 192.0.2.10"),
    ("AAAA", "static.cdn.headwater.test. 300 IN AAAA 2001:db8::10"),
    ("TXT", 'cdn.headwater.test. 300 IN TXT "headwater CDN"'),
    ("MX", "cdn.headwater.test. 300 IN MX 10 mail.cdn.headwater.test."),
    ("SRV", "_http._tcp.cdn.headwater.test. 300 IN SRV 0 5 8081 static.cdn.headwater.test."),
    ("CAA", 'cdn.headwater.test. 300 IN CAA 0 issue "letsencrypt.org"'),
    ("NS", "cdn.headwater.test. 300 IN NS ns1.cdn.headwater.test."),
    ("SOA", "cdn.headwater.test. 300 IN SOA ns1.cdn.headwater.test. hostmaster.cdn.headwater.test. 1 3600 600 1209600 40"),
    ("CNAME", "www.cdn.headwater.test. 300 IN CNAME video.cdn.headwater.test."),
])
def test_dig_every_record_type(daemon, qtype, expected):
    name = {"TXT": "", "MX": "", "CAA": "", "NS": "", "SOA": "", "SRV": "_http._tcp.", "CNAME": "www."}.get(qtype, "static.")
    out = dig(daemon, f"{name}cdn.headwater.test", qtype)
    assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
    answer = out.split("ANSWER SECTION:\n")[1].split("\n\n")[0]
    assert " ".join(answer.split()) == expected


def test_dig_rcodes_and_case(daemon):
    out = dig(daemon, "NoPe.cdn.headwater.test", "A")
    assert "status: NXDOMAIN" in out and "NoPe.cdn.headwater.test." in out
    assert " ".join(out.split("AUTHORITY SECTION:\n")[1].split()[:4]) == "cdn.headwater.test. 40 IN SOA"
    out = dig(daemon, "static.cdn.headwater.test", "MX")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and "AUTHORITY: 1" in out
    assert "status: REFUSED" in dig(daemon, "example.org", "A")
    assert "Transfer failed" in dig(daemon, "cdn.headwater.test", "AXFR")
    axfr = dns.query.tcp(dns.message.make_query("cdn.headwater.test.", "AXFR"), "127.0.0.1", port=daemon.cfg.port,
                         timeout=2)
    assert axfr.rcode() == dns.rcode.REFUSED
    # The master file's zone is served beside the config's.
    assert "192.0.2.1" in dig(daemon, "www.files.test", "A", "+short")


def test_formerr_notimp_badvers(daemon):
    q = dns.message.make_query("static.cdn.headwater.test.", "A")
    wire = bytearray(q.to_wire())
    wire[5] = 2
    answer = udp(daemon, bytes(wire))
    assert answer[:2] == wire[:2] and answer[3] & 0x0F == dns.rcode.FORMERR
    wire = bytearray(q.to_wire())
    wire[2] |= 5 << 3  # UPDATE
    answer = udp(daemon, bytes(wire))
    assert answer[:2] == wire[:2] and answer[3] & 0x0F == dns.rcode.NOTIMP
    out = dig(daemon, "static.cdn.headwater.test", "+edns=1", "+noednsnegotiation")
    assert "status: BADVERS" in out and "EDNS: version: 0" in out
    assert "EDNS" not in dig(daemon, "static.cdn.headwater.test", "+noedns")


def test_ecs_steering_and_scope(daemon):
    out = dig(daemon, "video.cdn.headwater.test", "A", "+subnet=10.2.3.0/24")
    assert "CLIENT-SUBNET: 10.2.3.0/24/16" in out
    answer = out.split("ANSWER SECTION:\n")[1].split("\n\n")[0].splitlines()
    # Nothing answers the stand-in /healthz URLs, so both POPs are down and every POP answers
    # (fail open), nearest first: nyc for 10.2/16.
    assert answer[0].split()[-1] == "127.0.0.2" and answer[0].split()[1] == "30"
    out = dig(daemon, "video.cdn.headwater.test", "A", "+subnet=10.1.3.0/24")
    assert out.split("ANSWER SECTION:\n")[1].split()[4] == "127.0.0.1"
    # A static answer echoes the subnet with scope 0.
    assert "CLIENT-SUBNET: 10.1.3.0/24/0" in dig(daemon, "static.cdn.headwater.test", "+subnet=10.1.3.0/24")


def test_tcp_several_queries_on_one_connection(daemon):
    names = ["static.cdn.headwater.test.", "nope.cdn.headwater.test.", "www.files.test."]
    queries = [dns.message.make_query(n, "A") for n in names]
    with socket.create_connection(("127.0.0.1", daemon.cfg.port), timeout=3) as s:
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        for q in queries:
            (n,) = struct.unpack("!H", recv_exactly(s, 2))
            msg = dns.message.from_wire(recv_exactly(s, n))
            assert msg.id == q.id
        # ...and the connection stays open for more.
        s.sendall(struct.pack("!H", len(queries[0].to_wire())) + queries[0].to_wire())
        assert len(recv_exactly(s, 2)) == 2
    assert "192.0.2.10" in dig(daemon, "static.cdn.headwater.test", "+tcp", "+short")


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def test_truncation_then_tcp_fallback(daemon):
    out = dig(daemon, "big.files.test", "TXT", "+ignore", "+bufsize=1232")
    assert " tc" in out.split("flags:")[1].split(";")[0] and "ANSWER: 0" in out
    out = dig(daemon, "big.files.test", "TXT", "+bufsize=1232")
    assert "Truncated, retrying in TCP mode" in out and "ANSWER: 12" in out


@pytest.mark.parametrize("packet", [
    b"\x07", bytes(range(11)),                                             # shorter than a header
    b"\x12\x34\x81\x00" + b"\x00\x01" + b"\x00" * 6 + b"\x00\x00\x01\x00\x01",  # a response
])
def test_packets_that_get_no_answer(daemon, packet):
    assert udp(daemon, packet, timeout=0.3) is None
    still_answers(daemon)


@pytest.mark.parametrize("packet", [
    b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x0c\x00\x01\x00\x01",   # compression loop
    b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\xff\x00\x01\x00\x01",   # pointer past the end
    b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x05abc",                    # truncated question
    b"\xab\xcd\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + b"\x00\x00\x01\x00\x01" * 2,  # QDCOUNT 2
])
def test_malformed_packets_get_formerr(daemon, packet):
    answer = udp(daemon, packet)
    assert answer is not None and answer[:2] == b"\xab\xcd" and answer[3] & 0x0F == dns.rcode.FORMERR
    still_answers(daemon)


@pytest.mark.parametrize("ecs", [
    struct.pack("!HBB", 1, 24, 0) + b"\x0a\x01",            # too few address bytes for /24
    struct.pack("!HBB", 1, 16, 0) + b"\x0a\x01\x02",        # too many for /16
    struct.pack("!HBB", 1, 12, 0) + b"\x0a\x1f",            # bits past the prefix
    struct.pack("!HBB", 7, 8, 0) + b"\x0a",                 # unknown family
])
def test_bad_ecs_options_get_formerr_with_opt(daemon, ecs):
    q = dns.message.make_query("video.cdn.headwater.test.", "A", use_edns=0,
                               options=[dns.edns.GenericOption(8, ecs)])
    answer = dns.message.from_wire(udp(daemon, q.to_wire()))
    assert answer.rcode() == dns.rcode.FORMERR and answer.edns == 0 and answer.id == q.id
    still_answers(daemon)


def test_random_bytes_never_stop_the_server(daemon):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(300):
            s.sendto(os.urandom(12 + i % 200), ("127.0.0.1", daemon.cfg.port))
    time.sleep(0.2)
    still_answers(daemon)


@pytest.mark.parametrize("send", [
    b"\x00\x00",                      # a length of 0
    b"\x00\x05hello",                 # not DNS (shorter than a header)
    b"\x01\xf4" + b"\x00" * 10,       # says 500 bytes, sends 10 and stalls
])
def test_tcp_hostile_messages_close_the_connection(daemon, send):
    with socket.create_connection(("127.0.0.1", daemon.cfg.port), timeout=5) as s:
        s.sendall(send)
        started = time.monotonic()
        assert s.recv(100) == b""      # closed, with no answer
        assert time.monotonic() - started < 3
    still_answers(daemon)


def test_metrics_and_healthz(daemon):
    for _ in range(3):
        ask(daemon, "static.cdn.headwater.test.")
    base = f"http://127.0.0.1:{daemon.cfg.admin_port}"
    health = httpx.get(f"{base}/healthz").json()
    assert health["status"] == "ok" and "cdn.headwater.test." in health["zones"] and health["cache"]["hits"] >= 2
    metrics = httpx.get(f"{base}/metrics").text
    assert 'headwater_dns_queries_total{qtype="A",rcode="NOERROR",transport="udp"}' in metrics
    assert 'headwater_dns_cache{what="hits"}' in metrics and "headwater_dns_pop_up" in metrics


def test_hot_reload_under_a_query_loop_loses_no_query(daemon):
    query = dns.message.make_query("www.files.test.", "A")
    seen: list[str] = []
    lost: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            i = 0
            while not stop.is_set():
                query.id = i & 0xFFFF
                s.sendto(query.to_wire(), ("127.0.0.1", daemon.cfg.port))
                try:
                    msg = dns.message.from_wire(s.recv(4096))
                    seen.append(msg.answer[0][0].address)
                except socket.timeout:
                    lost.append(i)
                i += 1

    t = threading.Thread(target=loop)
    t.start()
    try:
        time.sleep(0.3)
        generation = daemon.server.source.generation
        zone = daemon.folder / "files.zone"
        zone.write_text("garbage that is no zone\n")          # a bad file: logged, old zone kept
        wait_for(lambda: daemon.server.reloads["failed"] >= 1)
        time.sleep(0.2)
        zone.write_text(ZONE.format(address="192.0.2.2", big=BIG))
        wait_for(lambda: daemon.server.source.generation > generation)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(5)
    assert not lost and len(seen) > 50
    assert seen[0] == "192.0.2.1" and seen[-1] == "192.0.2.2"
    flips = sum(1 for a, b in zip(seen, seen[1:]) if a != b)
    assert flips == 1  # one swap, never back
    # Put the original back for the other tests.
    zone.write_text(ZONE.format(address="192.0.2.1", big=BIG))
    wait_for(lambda: ask(daemon, "www.files.test.").answer[0][0].address == "192.0.2.1")


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sighup_reloads_a_node_started_by_the_cli(tmp_path):
    path = write_config(tmp_path, port=free_port(), admin_port=free_port())
    text = path.read_text().replace("reload_interval_seconds = 0.2", "reload_interval_seconds = 0")
    path.write_text(text)
    cfg = load(path).dns
    headwater = Path(sys.executable).with_name("headwater")
    proc = subprocess.Popen([str(headwater), "node", cfg.id, "-c", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{cfg.admin_port}/healthz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, 30)
        msg = dns.query.udp(dns.message.make_query("www.files.test.", "A"), "127.0.0.1", port=cfg.port, timeout=2)
        assert msg.answer[0][0].address == "192.0.2.1"
        (tmp_path / "files.zone").write_text(ZONE.format(address="192.0.2.7", big=BIG))
        time.sleep(0.5)  # no polling: nothing changes until the signal
        msg = dns.query.udp(dns.message.make_query("www.files.test.", "A"), "127.0.0.1", port=cfg.port, timeout=2)
        assert msg.answer[0][0].address == "192.0.2.1"
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: dns.query.udp(dns.message.make_query("www.files.test.", "A"), "127.0.0.1",
                                       port=cfg.port, timeout=2).answer[0][0].address == "192.0.2.7")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rrl_limits_a_flood_over_udp_and_never_tcp(tmp_path):
    d = Daemon(write_config(tmp_path, port=free_port(), admin_port=free_port(), rrl=True), "asyncio").start()
    try:
        q = dns.message.make_query("static.cdn.headwater.test.", "A")
        answered = slipped = dropped = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            for _ in range(40):
                s.sendto(q.to_wire(), ("127.0.0.1", d.cfg.port))
                try:
                    msg = dns.message.from_wire(s.recv(4096))
                except socket.timeout:
                    dropped += 1
                    continue
                if msg.flags & dns.flags.TC:
                    assert not msg.answer
                    slipped += 1
                else:
                    answered += 1
        assert 5 <= answered <= 8 and slipped >= 10 and dropped >= 10
        msg = dns.query.tcp(q, "127.0.0.1", port=d.cfg.port, timeout=2)
        assert msg.answer[0][0].address == "192.0.2.10"
        metrics = httpx.get(f"http://127.0.0.1:{d.cfg.admin_port}/metrics").text
        assert 'hw_dns_rrl_responses_total{verdict="dropped"}' in metrics
    finally:
        d.stop()
