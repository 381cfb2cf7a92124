"""Real /healthz probes against stand-in POPs on 127.0.0.1 (the kernel's HTTP server), on both
anyio backends: a POP whose /healthz starts failing leaves the steered answers after ``fall``
probes and comes back after ``rise``; a reported load over ``max_load`` steers around it; every
probe is bounded (timeout, body size, no redirects)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import time
from typing import AsyncIterator, Callable

import anyio
import httpx
import pytest

from headwater.dns.health.config import HealthConfig
from headwater.dns.health.prober import Prober
from headwater.dns.health.tracker import HealthTracker
from headwater.dns.steering.config import Pop, SteeredName, SteeringConfig
from headwater.geo.config import GeoConfig, GeoRule, packaged_geoip_db
from headwater.dns.steering.steer import Steering
from headwater.http import Request, Response, serve

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

FAST = HealthConfig(interval_s=0.2, timeout_s=0.2, rise=2, fall=2)
CLIENT = ipaddress.ip_network("127.0.0.0/24")


class StandinPop:
    """A POP's /healthz whose answer the test sets: status, body, or a hang."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b'{"status":"ok"}'
        self.hang = False
        self.redirect = False
        self.calls = 0
        self.port = 0

    async def app(self, req: Request) -> Response:
        self.calls += 1
        if self.hang:
            await anyio.sleep_forever()
        if self.redirect:
            return Response(302, [("location", "/elsewhere")], b"")
        return Response(self.status, [("content-type", "application/json")], self.body)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"


@contextlib.asynccontextmanager
async def standins(n: int) -> AsyncIterator[tuple[anyio.abc.TaskGroup, list[StandinPop]]]:
    pops = [StandinPop() for _ in range(n)]
    async with anyio.create_task_group() as tg:
        for p in pops:
            p.port = await tg.start(lambda task_status, p=p: serve(p.app, port=0, task_status=task_status))
        yield tg, pops
        tg.cancel_scope.cancel()


def steering_config(urls: list[str], max_load: float | None = None) -> SteeringConfig:
    # the clients here are on 127.0.0.0/8, placed in London by a rule; pop-1 is London's
    pops = (
        Pop(name="pop-1", ipv4=("192.0.2.1",), lat=51.5, lon=-0.12, healthz=urls[0], max_load=max_load),
        Pop(name="pop-2", ipv4=("192.0.2.2",), lat=50.1, lon=8.68, healthz=urls[1]),
    )
    geo = GeoConfig(geoip_db=packaged_geoip_db(),
                    rules=(GeoRule(network=ipaddress.ip_network("127.0.0.0/8"), lat=51.5, lon=-0.1),))
    return SteeringConfig(pops=pops, geo=geo, steered=(SteeredName(name="video"),))


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``condition()`` holds (polled), failing the test after ``timeout``."""
    start = time.monotonic()
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)
    return time.monotonic() - start


async def test_a_failing_pop_drops_out_after_fall_probes_and_comes_back_after_rise() -> None:
    async with standins(2) as (tg, (one, two)):
        cfg = steering_config([one.url, two.url])
        tracker = HealthTracker(cfg.pops, FAST.rise, FAST.fall)
        steering = Steering(cfg, tracker)
        await tg.start(Prober(tracker, FAST).run_forever)
        await wait_for(lambda: tracker.state("pop-1") == "up" and tracker.state("pop-2") == "up")
        assert steering.steer("video", 4, CLIENT, True).addresses == ("192.0.2.1",)

        one.status = 503
        calls = one.calls
        took = await wait_for(lambda: not tracker.is_up("pop-1"))
        h = tracker.health("pop-1")
        assert h.failures == FAST.fall and h.last_error == "HTTP 503"
        assert one.calls - calls >= FAST.fall
        # within about interval x fall (one pass may already be under way when the status flips)
        assert FAST.interval_s * (FAST.fall - 1) * 0.8 <= took <= FAST.interval_s * (FAST.fall + 1) + 1.0
        assert steering.steer("video", 4, CLIENT, True).addresses == ("192.0.2.2",)

        one.status = 200
        await wait_for(lambda: tracker.is_up("pop-1"))
        assert tracker.health("pop-1").successes == FAST.rise
        assert steering.steer("video", 4, CLIENT, True).addresses == ("192.0.2.1",)

        # both down: fail open, with both POPs, nearest first
        one.status = two.status = 500
        await wait_for(lambda: not tracker.is_up("pop-1") and not tracker.is_up("pop-2"))
        assert steering.steer("video", 4, CLIENT, True).addresses == ("192.0.2.1", "192.0.2.2")


async def test_a_pop_reporting_load_over_max_load_is_steered_around() -> None:
    async with standins(2) as (_, (one, two)):
        cfg = steering_config([one.url, two.url], max_load=0.9)
        tracker = HealthTracker(cfg.pops, FAST.rise, FAST.fall)
        steering = Steering(cfg, tracker)
        prober = Prober(tracker, FAST)
        one.body = json.dumps({"status": "ok", "load": 0.95}).encode()
        await prober.run_once()
        assert tracker.load("pop-1") == 0.95 and tracker.is_full("pop-1")
        assert steering.steer("video", 4, CLIENT, True).addresses == ("192.0.2.2",)
        one.body = json.dumps({"load": 0.3}).encode()
        await prober.run_once()
        assert not tracker.is_full("pop-1")
        assert steering.steer("video", 4, CLIENT, True).addresses == ("192.0.2.1",)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


async def test_every_probe_is_bounded() -> None:
    async with standins(3) as (_, (hanging, big, redirecting)):
        hanging.hang = True
        big.body = b'{"load": 0.5, "pad": "' + b"x" * (1024 * 1024) + b'"}'
        redirecting.redirect = True
        refused = Pop(name="refused", ipv4=("192.0.2.9",), lat=0, lon=0,
                      healthz=f"http://127.0.0.1:{closed_port()}/healthz")
        pops = [Pop(name=n, ipv4=("192.0.2.9",), lat=0, lon=0, healthz=u)
                for n, u in (("hanging", hanging.url), ("big", big.url), ("redirecting", redirecting.url))]
        tracker = HealthTracker([*pops, refused], 1, 1)
        prober = Prober(tracker, FAST)
        async with httpx.AsyncClient(trust_env=False) as client:
            start = time.monotonic()
            result = await prober.probe(client, pops[0])
            assert not result.ok and "timed out" in result.error
            assert time.monotonic() - start < FAST.timeout_s + 0.5
            result = await prober.probe(client, pops[1])
            # a body past max_body_bytes is not read: the status alone decides, no load
            assert result.ok and result.load is None
        start = time.monotonic()
        await prober.run_once()  # all four at once: the pass takes one timeout, not four
        assert time.monotonic() - start < FAST.timeout_s + 0.5
        assert tracker.state("hanging") == "down" and tracker.state("refused") == "down"
        assert tracker.state("redirecting") == "down" and tracker.health("redirecting").last_error == "HTTP 302"
        assert tracker.state("big") == "up"
        assert "Connect" in tracker.health("refused").last_error
