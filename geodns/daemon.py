"""The ``dns`` daemon: UDP and TCP on ``port``, /healthz and /metrics on ``admin_port``.

Each worker process runs :func:`run_dns`: it loads the zones, builds the answerer (with the
steering, the DNSSEC signers and the response rate limiter from :func:`build_steering`,
:func:`build_signers` and :func:`build_rrl`, the one place each is constructed), and serves:

- UDP through the kernel's shell (:mod:`headwater.datagram`) with SO_REUSEPORT, every datagram
  answered synchronously: the answer cache first (:mod:`.cache`), the answerer on a miss, then
  the rate limiter's verdict (send, drop, or slip a truncated answer);
- TCP (:mod:`.tcp`), never rate limited;
- with ``[dns.dnssec] enabled``, every zone signed online (:mod:`.dnssec`): queries with the DO
  bit get RRSIGs, DNSKEY and NSEC white lies; each zone's key is sealed in ``key_dir``, created
  on first start. The answer cache keeps DO and plain answers apart (the DO bit is part of its
  key) and is emptied when the signing window turns, so it never serves old signatures;
- the admin endpoint: /healthz (zones, generation, cache) and /metrics (queries by type, RCODE
  and transport, cache hits and misses, reloads);
- hot reload on SIGHUP and when cluster.toml or a zone file changes (:mod:`.reload`): the new
  zones are read in a worker thread (queries are answered meanwhile), validated whole and
  swapped in between two datagrams, so no query is lost or answered from half a zone; a bad
  file is logged and the old zones stay.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import dnslib

from headwater.admin import serve_admin
from headwater.workermetrics import shared_metrics
from headwater.config import ClusterConfig
from headwater.datagram import DatagramStats, bind_udp, serve_datagrams
from headwater.http.transport import bind_socket
from headwater.metrics import Registry, add_process_metrics
from headwater.sealed import Sealer

from .answer import Answerer, Steering
from .cache import AnswerCache, query_key
from .config import DnsConfig
from .dnssec.keys import ZoneKey, load_or_create_zone_key
from .dnssec.sign import WINDOW_S, ZoneSigner
from .errors import rcode_name
from .health import prober
from .health.tracker import HealthTracker
from .reload import ZoneSource
from .rrl import ResponseRateLimiter, RrlConfig, Verdict, add_rrl_metrics
from .steering.steer import Steering as PopSteering
from .tcp import TcpStats, serve_tcp
from .zone import Key, ZoneSet

__all__ = ["DnsServer", "run_dns", "build_steering", "build_signers", "build_rrl"]

log = logging.getLogger("headwater.dns")


def build_steering(cluster: ClusterConfig, cfg: DnsConfig,
                   tracker: HealthTracker | None = None) -> tuple[Steering | None, HealthTracker | None]:
    """The steering of the steered names over a health tracker of the POPs (``tracker``, when
    given, is kept: a reload changes its POPs, not their health so far). None without steered
    names. The daemon runs the tracker's prober (:func:`headwater.dns.health.prober.run`)."""
    if cfg.steering is None or not cfg.steered:
        return None, tracker
    if tracker is None:
        tracker = HealthTracker(cfg.steering.pops, rise=cfg.health.rise, fall=cfg.health.fall)
    else:
        tracker.set_pops(cfg.steering.pops)
    return PopSteering(cfg.steering, tracker), tracker


def build_signers(cluster: ClusterConfig, cfg: DnsConfig, zones: ZoneSet,
                  keys: dict[tuple[Key, Path], ZoneKey] | None = None) -> dict[Key, ZoneSigner]:
    """Zone origin key -> online signer of that zone, for every zone in ``zones``, when
    ``[dns.dnssec]`` is on (else empty: answers go unsigned).

    Each zone's key is loaded from ``key_dir``, or created and sealed there on first start (the
    file is published exclusively, so the workers starting together end up with one key: see
    :func:`headwater.dns.dnssec.keys.load_or_create_zone_key`). ``keys`` (zone and key_dir ->
    key), when given, caches the keys across reloads; a reload adding a zone creates its key.
    Raises :class:`~headwater.sealed.SealedError` or ConfigError (no cluster secret): a daemon
    told to sign must not serve unsigned answers under a DS the parent may hold."""
    dnssec = cfg.dnssec
    if not dnssec.enabled:
        return {}
    sealer: Sealer | None = None
    signers: dict[Key, ZoneSigner] = {}
    for zone in zones.zones:
        slot = (zone.origin_key, dnssec.key_dir)
        key = keys.get(slot) if keys is not None else None
        if key is None:
            if sealer is None:
                sealer = Sealer.from_config(cluster)
            key, created = load_or_create_zone_key(zone.origin, dnssec.key_dir, sealer)
            if created:
                log.warning("dns: created the DNSSEC key of %s in %s (tag %d): give its DS to the parent zone "
                            "(headwater dns ds)", zone.origin_text, dnssec.key_dir, key.key_tag,
                            extra={"event": "dns.dnssec_key_created", "zone": zone.origin_text,
                                   "key_tag": key.key_tag})
            if keys is not None:
                keys[slot] = key
        # NSEC records carry the negative TTL the SOA beside them has (RFC 9077); the DNSKEY
        # RRset lives as long as the apex's other records.
        signers[zone.origin_key] = ZoneSigner(zone.origin, key, negative_ttl=zone.negative_ttl,
                                              dnskey_ttl=zone.soa.ttl, config=dnssec)
    return signers


def build_rrl(cluster: ClusterConfig, cfg: DnsConfig) -> ResponseRateLimiter | None:
    """The response rate limiter of UDP answers (``[dns.rrl]``), None when it is off. Its hash
    secret is fresh per worker (os.urandom): nobody outside can aim accounts at one set."""
    return ResponseRateLimiter(cfg.rrl) if cfg.rrl.enabled else None


# The query types /metrics names: the ones dnslib knows (a fixed set of about fifty). A client
# can put any of 65536 numbers in a question; counting each apart would let it mint that many
# series per RCODE and transport (and grow the counters here without bound), so every other
# type is counted under one label, "other".
_NAMED_QTYPES = frozenset(dnslib.QTYPE.forward)
OTHER_QTYPE = -1


def counted_qtype(qtype: int) -> int:
    """``qtype`` as the query counters key it: itself when it has a name, else OTHER_QTYPE."""
    return qtype if qtype in _NAMED_QTYPES else OTHER_QTYPE


def qtype_label(qtype: int) -> str:
    """The ``qtype`` label of a counted type."""
    return "other" if qtype == OTHER_QTYPE else dnslib.QTYPE[qtype]


# What the RRL metrics read once a reload has turned the limiter off.
_IDLE_RRL = ResponseRateLimiter(RrlConfig(max_buckets=1), secret=b"idle")


def _slip(data: bytes, end: int) -> bytes:
    """A truncated, empty answer to ``data`` (RRL's slip): the client retries over TCP."""
    flags = 0x8000 | ((data[2] << 8 | data[3]) & 0x7910) | 0x0400 | 0x0200
    return data[:2] + flags.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00\x00\x00" + data[12:end + 4]


def _qname_text(data: bytes, end: int) -> str:
    labels, i = [], 12
    while i < end - 1:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    return ".".join(labels) + "."


class DnsServer:
    """One worker's state: the zones' source, the answerer (swapped on reload), the cache,
    the counters; :meth:`on_datagram` and :meth:`on_tcp_message` are the shells' handlers."""

    def __init__(self, cluster: ClusterConfig, cfg: DnsConfig, *, registry: Registry, worker: int = 0,
                 clock: Any = time.monotonic, wall_clock: Any = time.time) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.worker = worker
        self.clock = clock
        self.wall_clock = wall_clock
        self.source = ZoneSource(cluster, cfg)
        self.steering, self.tracker = build_steering(cluster, cfg)
        self._geo_stamp = self.source.geo_stamp()
        self._keys: dict[tuple[Key, Path], ZoneKey] = {}
        self.signers = build_signers(cluster, cfg, self.source.zones, self._keys)
        self.rrl = build_rrl(cluster, cfg)
        self.answerer = self._answerer()
        self.cache = AnswerCache(max_entries=cfg.cache_entries, max_bytes=cfg.cache_bytes)
        self.counts: Counter[tuple[int, int, str]] = Counter()
        self.rrl_counts: Counter[str] = Counter()  # verdict name -> UDP answers (SEND, DROP, SLIP)
        self.udp = DatagramStats()
        self.tcp = TcpStats()
        self.reloads = Counter({"ok": 0, "failed": 0})
        self._reloading: anyio.Lock | None = None
        self.udp_port = cfg.port
        self.tcp_port = cfg.port
        self.admin_port = cfg.admin_port
        self._export(registry)

    def _answerer(self) -> Answerer:
        return Answerer(self.source.zones, steering=self.steering, signers=self.signers,
                        max_udp=self.source.cfg.max_udp_size)

    # --- the hot paths --------------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: Any) -> bytes | None:
        """One UDP query: from the cache when it can be, else answered and cached; then RRL."""
        client_ip = addr[0]
        answerer = self.answerer
        if self.cache.max_entries:
            generation: Any = answerer.generation
            if self.signers:
                # Signed answers carry the signing window's inception and expiration: a new
                # window (hourly) empties the cache, as a zone change does.
                generation = (generation, int(self.wall_clock()) // WINDOW_S)
            wire, found = self.cache.lookup(data, client_ip, generation)
            if wire is not None:
                self.counts[(counted_qtype(found.qtype), found.rcode, "udp")] += 1
                return wire if self.rrl is None else self._limit(data, client_ip, found.kind, wire, found.zone)
        else:
            found = None
        answered = answerer.answer(data, client_ip, tcp=False)
        if answered is None:
            return None
        self.cache.store(found, client_ip, answered)
        self.counts[(counted_qtype(answered.qtype), answered.rcode, "udp")] += 1
        if self.rrl is None:
            return answered.wire
        return self._limit(data, client_ip, answered.kind, answered.wire, answered.zone)

    def _limit(self, data: bytes, client_ip: str, kind: str, wire: bytes, zone: str) -> bytes | None:
        """RRL's verdict on one UDP answer: the answer, nothing, or a slip (TC=1, empty)."""
        key = query_key(data)
        end = key[1] if key is not None else 0
        qname = _qname_text(data, end) if end else ""
        verdict = self.rrl.decide(client_ip, kind, qname, self.clock(), zone=zone)
        self.rrl_counts[verdict.name] += 1
        if verdict is Verdict.SEND:
            return wire
        if verdict is Verdict.SLIP and end:
            return _slip(data, end)
        return None

    def on_tcp_message(self, data: bytes, client_ip: str) -> bytes | None:
        """One TCP query (never cached as UDP answers are: no truncation limit, no RRL)."""
        answered = self.answerer.answer(data, client_ip, tcp=True)
        if answered is None:
            return None
        self.counts[(counted_qtype(answered.qtype), answered.rcode, "tcp")] += 1
        return answered.wire

    # --- reload -------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read config and zones; swap the answerer in whole, or keep the old one."""
        return self._apply(self.source.try_read())

    async def reload_off_loop(self) -> bool:
        """:meth:`reload` with the reading in a worker thread: a big zone takes seconds to parse,
        and the event loop answers queries meanwhile (the thread and the loop share the GIL, the
        loop gets it back every few milliseconds). The swap happens here, in the loop, between
        two datagrams. One reload at a time (SIGHUP and a file change may come together); a
        shutdown does not wait for a read in progress."""
        if self._reloading is None:
            self._reloading = anyio.Lock()
        async with self._reloading:
            read = await anyio.to_thread.run_sync(self.source.try_read, abandon_on_cancel=True)
            return self._apply(read)

    def _apply(self, read: tuple[DnsConfig, ZoneSet] | None) -> bool:
        ok = read is not None
        self.reloads["ok" if ok else "failed"] += 1
        if read is not None:
            self.source.adopt(*read)
            fresh = self.source.cfg
            geo_stamp = self.source.geo_stamp()
            if (fresh.steering, fresh.health) != (self.cfg.steering, self.cfg.health) or geo_stamp != self._geo_stamp:
                # (a geo database replaced at the same path is opened afresh too)
                old = self.steering
                self.steering, self.tracker = build_steering(self.cluster, fresh, self.tracker)
                self._geo_stamp = geo_stamp
                if old is not None:
                    # nothing else holds it: queries are answered synchronously, between reloads
                    old.locator.close()
            if fresh.rrl != self.cfg.rrl:
                self.rrl = build_rrl(self.cluster, fresh)
            try:
                # Fresh signers for the new zones (their SOA gives the NSEC TTL); the keys are
                # kept, so only a zone new to this daemon costs a key file read (or creation).
                self.signers = build_signers(self.cluster, fresh, self.source.zones, self._keys)
            except Exception as e:  # noqa: BLE001 — a key that cannot be opened keeps the old signers
                log.error("dns: the DNSSEC keys of the reloaded zones cannot be used (%s); keeping the old "
                          "signers", e, extra={"event": "dns.dnssec_reload_failed", "error": str(e)})
            self.cfg = fresh
            self.answerer = self._answerer()
        return ok

    async def watch_signals(self) -> None:
        """Reload on SIGHUP (only the main thread can receive signals; a daemon run in another
        thread, as some tests do, reloads on file changes alone)."""
        try:
            receiver = anyio.open_signal_receiver(signal.SIGHUP)
            signals = receiver.__enter__()
        except (RuntimeError, ValueError) as e:
            log.info("dns: no SIGHUP handling here (%s); file changes still reload", e,
                     extra={"event": "dns.no_sighup"})
            return
        try:
            async for _ in signals:
                log.info("dns: SIGHUP, reloading", extra={"event": "dns.sighup"})
                await self.reload_off_loop()
        finally:
            receiver.__exit__(None, None, None)

    async def watch_files(self) -> None:
        interval = self.cfg.reload_interval_s
        if interval <= 0:
            return
        while True:
            await anyio.sleep(interval)
            if self.source.changed():
                await self.reload_off_loop()

    # --- admin --------------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        zones = self.source.zones
        return {"status": "ok", "role": "dns", "id": self.cfg.id, "pid": os.getpid(), "worker": self.worker,
                "workers": self.cfg.workers, "port": self.udp_port,
                "zones": [str(z.origin) for z in zones.zones], "generation": self.source.generation,
                "steered": [s.name for s in self.cfg.steered], "steering": self.steering is not None,
                "pops": self.tracker.to_json() if self.tracker is not None else {},
                "signed": {".".join(k.decode() for k in key) + ".": signer.key.key_tag
                           for key, signer in sorted(self.signers.items())},
                "cache": self.cache.statistics(), "reloads": dict(self.reloads),
                "queries": sum(self.counts.values())}

    def _export(self, registry: Registry) -> None:
        queries = registry.counter("headwater_dns_queries_total", "DNS queries answered, by type, RCODE and transport",
                                   labels=("qtype", "rcode", "transport"))
        cache = registry.gauge("headwater_dns_cache", "answer cache: entries, bytes, hits, misses", labels=("what",))
        reloads = registry.gauge("headwater_dns_reloads", "zone reloads, by outcome", labels=("outcome",))
        udp = registry.gauge("headwater_dns_udp", "UDP datagrams: received, sent, send_dropped, handler_errors",
                             labels=("what",))
        tcp = registry.gauge("headwater_dns_tcp", "TCP: connections, queries, closes by reason (evicted: to make room)", labels=("what",))
        generation = registry.gauge("headwater_dns_zone_generation", "zone generation (bumped by each reload)")
        decisions = registry.gauge("headwater_dns_steering_decisions", "steered answers by first-choice POP",
                                   labels=("pop",))
        signing = registry.gauge("headwater_dns_dnssec_signatures",
                                 "DNSSEC signatures: made, served from the signature cache", labels=("what",))
        pop_up = registry.gauge("headwater_dns_pop_up", "1 while the health checks see the POP up", labels=("pop",))
        seen: dict[tuple[int, int, str], float] = {}

        def collect() -> None:
            for (qtype, rcode, transport), n in list(self.counts.items()):
                child = queries.labels(qtype_label(qtype), rcode_name(rcode), transport)
                child.inc(n - seen.get((qtype, rcode, transport), 0))
                seen[(qtype, rcode, transport)] = n
            for k, v in self.cache.statistics().items():
                cache.labels(k).set(v)
            for k, v in self.reloads.items():
                reloads.labels(k).set(v)
            for k in ("received", "sent", "send_dropped", "handler_errors"):
                udp.labels(k).set(getattr(self.udp, k))
            for k in ("connections", "queries", "idle_closed", "timed_out", "bad_closed", "evicted"):
                tcp.labels(k).set(getattr(self.tcp, k))
            generation.set(self.source.generation)
            if self.steering is not None:
                for pop, n in self.steering.decisions.items():
                    decisions.labels(pop).set(n)
            if self.signers:
                stats = [signer.statistics() for signer in self.signers.values()]
                signing.labels("made").set(sum(st.signatures for st in stats))
                signing.labels("cache_hits").set(sum(st.cache_hits for st in stats))
            if self.tracker is not None:
                for pop in self.tracker.pops:
                    pop_up.labels(pop.name).set(1 if self.tracker.is_up(pop.name) else 0)

        registry.add_collector(collect)
        if self.rrl is not None:
            add_rrl_metrics(registry, lambda: self.rrl or _IDLE_RRL)
        add_process_metrics(registry)


async def run_dns(cluster: ClusterConfig, node: DnsConfig, *, worker: int = 0,
                  task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """Run one worker: DNS on ``node.port`` (UDP and TCP), admin on ``node.admin_port``.

    ``task_status.started(server)`` once all three listen (the :class:`DnsServer`; its
    ``udp_port``, ``tcp_port`` and ``admin_port`` are the bound ports)."""
    registry = Registry()
    server = DnsServer(cluster, node, registry=registry, worker=worker)
    # Bind both DNS sockets before serving anything: a port taken fails the start, whole.
    udp_sock = bind_udp(node.host, node.port, reuse_port=True, receive_buffer=4 * 1024 * 1024)
    tcp_sock = bind_socket(node.host, node.port, reuse_port=True)
    server.udp_port = udp_sock.getsockname()[1]
    server.tcp_port = tcp_sock.getsockname()[1]
    zones = server.source.zones
    log.info("dns: serving %s on %s:%d (udp %d, tcp %d), worker %d", ", ".join(str(z.origin) for z in zones.zones),
             node.host, node.port, server.udp_port, server.tcp_port, worker,
             extra={"event": "dns.listening", "zones": [str(z.origin) for z in zones.zones]})
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve_datagrams(server.on_datagram, sock=udp_sock, stats=server.udp,
                                                           task_status=task_status))
        await tg.start(lambda task_status: serve_tcp(server.on_tcp_message, sock=tcp_sock,
                                                     max_connections=node.tcp_max_connections,
                                                     idle_timeout_s=node.tcp_idle_timeout_s,
                                                     query_timeout_s=node.tcp_query_timeout_s, stats=server.tcp,
                                                     task_status=task_status))
        # whichever worker answers a scrape, every worker's series (headwater/workermetrics.py)
        metrics = shared_metrics(cluster, node, registry, worker)
        server.admin_port = await tg.start(lambda task_status: serve_admin(
            host=node.host, port=node.admin_port, health=server.health, registry=metrics, reuse_port=True,
            task_status=task_status))
        tg.start_soon(metrics.run_forever)
        tg.start_soon(server.watch_signals)
        tg.start_soon(server.watch_files)
        if server.tracker is not None:
            # The prober reads the tracker's POPs on every pass, so a reload's new POPs are
            # probed from the next pass on; its interval is the one read at start.
            await tg.start(functools.partial(prober.run, server.tracker, node.health))
        task_status.started(server)
