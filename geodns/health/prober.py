"""Active health probes: every POP's ``/healthz``, every ``interval_s``, feeding a :class:`HealthTracker`.

An anyio loop (asyncio or trio) around httpx. Each pass probes every POP at once; a pass starts
every ``interval_s`` on the injected clock (a pass that overruns is followed at once by the
next, never by a burst). Every probe is bounded: ``timeout_s`` for the whole exchange (connect,
headers, body), at most ``max_body_bytes`` of body read, no redirects, no proxies from the
environment, no compressed bodies (``accept-encoding: identity``: a small gzip body could inflate
without bound), a fresh connection each time (a POP that has stopped accepting connections must
fail its probe, which a kept-alive connection would hide).

A probe is good when the answer is 200; a JSON object body with a numeric ``load`` (0..1 of
capacity) reports the POP's load, which the steering compares with the POP's ``max_load``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import anyio
import anyio.abc
import httpx

from headwater.clock import SYSTEM_CLOCK, Clock

from .config import HealthConfig
from .tracker import HealthTracker, ProbedPop, parse_load

__all__ = ["ProbeResult", "Prober", "run"]

log = logging.getLogger("headwater.dns.health")

USER_AGENT = "headwater-dns-health/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """What one probe found: ``ok`` (HTTP 200), the ``load`` reported, or why it failed."""

    ok: bool
    load: float | None = None
    error: str = ""


def _load_from_body(body: bytes, complete: bool) -> float | None:
    if not complete or not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return parse_load(data.get("load")) if isinstance(data, dict) else None


class Prober:
    """Probes the tracker's POPs (see the module docstring).

    ``client`` is an ``httpx.AsyncClient`` to use (the caller closes it); by default :meth:`run_forever`
    makes one for its lifetime and :meth:`run_once` one per pass.
    """

    def __init__(self, tracker: HealthTracker, config: HealthConfig, *, clock: Clock = SYSTEM_CLOCK,
                 client: httpx.AsyncClient | None = None) -> None:
        self.tracker = tracker
        self.config = config
        self.clock = clock
        self._client = client
        self.passes = 0
        self.probes = 0
        self.failures = 0

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.timeout_s),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=max(4, 2 * len(self.tracker.pops)),
                                max_keepalive_connections=0),
            headers={"user-agent": USER_AGENT, "accept": "application/json",
                     "accept-encoding": "identity"},
        )

    async def probe(self, client: httpx.AsyncClient, pop: ProbedPop) -> ProbeResult:
        """One bounded probe of ``pop``'s ``/healthz``."""
        limit = self.config.max_body_bytes
        try:
            with anyio.fail_after(self.config.timeout_s):
                async with client.stream("GET", pop.healthz) as resp:
                    if resp.status_code != 200:
                        return ProbeResult(ok=False, error=f"HTTP {resp.status_code}")
                    body = bytearray()
                    complete = True
                    encoded = resp.headers.get("content-encoding", "identity").lower() not in ("", "identity")
                    if not encoded:
                        async for chunk in resp.aiter_raw():
                            body += chunk
                            if len(body) > limit:
                                complete = False  # stop reading: the status alone decides
                                break
                    return ProbeResult(ok=True, load=_load_from_body(bytes(body), complete and not encoded))
        except TimeoutError:
            return ProbeResult(ok=False, error=f"timed out after {self.config.timeout_s:g} s")
        except httpx.HTTPError as e:
            return ProbeResult(ok=False, error=f"{type(e).__name__}: {e}"[:200])
        except OSError as e:
            return ProbeResult(ok=False, error=f"{type(e).__name__}: {e}"[:200])

    async def _probe_and_record(self, client: httpx.AsyncClient, pop: ProbedPop) -> None:
        result = await self.probe(client, pop)
        self.probes += 1
        if not result.ok:
            self.failures += 1
        if pop.name not in self.tracker.snapshot():
            return  # the POP left the config (a reload) while it was being probed
        before = self.tracker.health(pop.name)
        changed = self.tracker.record(pop.name, result.ok, result.load, error=result.error)
        after = self.tracker.health(pop.name)
        if (after.state == "down") != (before.state == "down"):
            if after.state == "down":
                log.warning("POP %s is down after %d failed probes: %s", pop.name, after.failures,
                            result.error, extra={"event": "dns.health.pop_down", "pop": pop.name,
                                                 "error": result.error})
            else:
                log.info("POP %s is up again after %d good probes", pop.name, after.successes,
                         extra={"event": "dns.health.pop_up", "pop": pop.name, "load": result.load})
        elif changed and after.full != before.full:
            log.info("POP %s reports load %s (max_load %s): %s", pop.name, after.load, pop.max_load,
                     "full" if after.full else "has room again",
                     extra={"event": "dns.health.pop_full" if after.full else "dns.health.pop_has_room",
                            "pop": pop.name, "load": after.load})

    async def run_once(self) -> None:
        """Probe every POP once, at the same time, and record the results."""
        if self._client is not None:
            await self._pass(self._client)
            return
        async with self._new_client() as client:
            await self._pass(client)

    async def _pass(self, client: httpx.AsyncClient) -> None:
        async with anyio.create_task_group() as tg:
            for pop in self.tracker.pops:
                tg.start_soon(self._probe_and_record, client, pop)
        self.passes += 1

    async def run_forever(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Probe every ``interval_s`` until cancelled; ``task_status.started()`` once running."""
        client = self._client
        async with (self._new_client() if client is None else _borrowed(client)) as client:
            task_status.started()
            interval = self.config.interval_s
            due = self.clock.monotonic()
            while True:
                await self._pass(client)
                due += interval
                now = self.clock.monotonic()
                if due < now:
                    due = now  # overran (a slow pass or a stalled loop): go on at once, no burst
                await self.clock.sleep(due - now)


class _borrowed:
    """An async context manager lending a client it does not close."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __aenter__(self) -> httpx.AsyncClient:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        return None


async def run(tracker: HealthTracker, config: HealthConfig, *, clock: Clock = SYSTEM_CLOCK,
              task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Probe ``tracker``'s POPs every ``config.interval_s`` until cancelled (the daemon's task)."""
    await Prober(tracker, config, clock=clock).run_forever(task_status=task_status)
