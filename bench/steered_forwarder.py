"""A TCP forwarder that asks the GeoDNS where to go for every new connection: the stand-in for a
browser's resolver whose TTL has expired, for the browser tests and ``bench playback``.

Chromium's ``--host-resolver-rules`` are fixed when it starts, so a test cannot change where the
CDN's name leads while a page plays. Instead Chromium maps the CDN's name to this forwarder
(``MAP video.cdn.headwater.test 127.0.0.1``, the POPs' port kept), and the forwarder, for each
connection it accepts, asks the GeoDNS daemon for the name's A records with an EDNS Client Subnet
(the test's viewer) and connects to the first answer on the same port: every connection is a
fresh resolution, as if the steered TTL had just run out.

When the answered POP refuses the connection (it was just killed and the GeoDNS has not yet taken
it out of answers), the forwarder asks again every ``retry_interval_s`` until the answer leads
somewhere that accepts, for at most ``retry_s``: what a browser's connection attempt plus its
resolver's next query would amount to. A connection that breaks mid-way is closed on the other
side too; the player's retry then makes a new connection, resolved anew.

``connections`` records every connection: when, which address the DNS answered, and how many
resolutions it took. Not for hostile clients: a test tool on 127.0.0.1, one thread per direction.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rdatatype

__all__ = ["Resolved", "SteeredForwarder", "steered_answer"]


def steered_answer(name: str, *, dns_port: int, subnet: str, dns_host: str = "127.0.0.1",
                   timeout_s: float = 1.0) -> list[str]:
    """The A records the GeoDNS answers for ``name`` to a client in ``subnet`` (ECS), in order."""
    q = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.ECSOption.from_text(subnet)])
    msg = dns.query.udp(q, dns_host, port=dns_port, timeout=timeout_s)
    return [r.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for r in rrset]


@dataclass(frozen=True, slots=True)
class Resolved:
    """One accepted connection: ``at`` (time.time() when accepted), ``connected`` (when the
    answered POP accepted it), the ``address`` it went to ("" when none accepted within retry_s)
    and how many DNS ``queries`` that took."""

    at: float
    connected: float
    address: str
    queries: int


class SteeredForwarder:
    """Listens on ``listen_host:port``; each connection goes to ``<answer>:port`` (see the module
    docstring). Use as a context manager."""

    def __init__(self, *, name: str, port: int, dns_port: int, subnet: str, dns_host: str = "127.0.0.1",
                 listen_host: str = "127.0.0.1", retry_s: float = 8.0, retry_interval_s: float = 0.1) -> None:
        self.name, self.port, self.dns_port, self.subnet, self.dns_host = name, port, dns_port, subnet, dns_host
        self.retry_s, self.retry_interval_s = retry_s, retry_interval_s
        self.connections: list[Resolved] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server((listen_host, port), backlog=64)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="steered-forwarder", daemon=True)

    def __enter__(self) -> SteeredForwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        # shutdown() wakes the thread blocked in accept(); close() alone would not on Linux, and
        # the port would stay bound until the next connection came.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for s in list(self._open):
                _close(s)
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> tuple[socket.socket | None, Resolved]:
        deadline = time.monotonic() + self.retry_s
        queries = 0
        at = time.time()
        while not self._stopping.is_set():
            queries += 1
            try:
                answer = steered_answer(self.name, dns_host=self.dns_host, dns_port=self.dns_port,
                                        subnet=self.subnet)
            except (OSError, dns.exception.DNSException):
                answer = []
            for address in answer:
                try:
                    upstream = socket.create_connection((address, self.port), timeout=1.0)
                    return upstream, Resolved(at, time.time(), address, queries)
                except OSError:
                    continue
            if time.monotonic() >= deadline:
                break
            time.sleep(self.retry_interval_s)
        return None, Resolved(at, time.time(), "", queries)

    def _serve(self, client: socket.socket) -> None:
        upstream, resolved = self._connect()
        with self._lock:
            self.connections.append(resolved)
        if upstream is None:
            _close(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        _close(client)
        _close(upstream)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy until either side ends; then end both, so a dead POP closes the browser's connection
    (which its player retries on a new one) rather than leaving it hanging."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass
