"""The origin's metrics the alert rules read (monitoring/prometheus/rules/origin.yml):

- ``hw_origin_responses_total{code}``: every answer of the app counted by status class, errors
  (a route that raises, a bug) included;
- ``hw_origin_jobs_ready{kind}`` and ``hw_origin_jobs_oldest_ready_seconds{kind}``
  (origin/queuegauges.py): the queue read in a pass, aged on the clock at scrape time, every
  configured kind present even when its queue is empty.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from headwater.clock import FakeClock
from headwater.http.types import Headers, Request, Response
from headwater.metrics import Registry
from headwater.origin.api.wire import Route, json_response
from headwater.origin.app import OriginApp
from headwater.origin.auth.issuer import ClientRegistry, Issuer
from headwater.origin.auth.tokens import AccessTokenVerifier
from headwater.origin.queuegauges import JobQueueGauges
from tests.unit.test_origin_upload_limits import Body, service

pytestmark = pytest.mark.anyio


def sample(registry: Registry, name: str, **labels: str) -> float:
    """One sample's value from the rendered text (what Prometheus would read)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in registry.render().splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {want} in:\n{registry.render()}")


async def test_responses_are_counted_by_status_class(tmp_path):
    clock = FakeClock()
    issuer = Issuer(key=ec.generate_private_key(ec.SECP256R1()), issuer="https://origin.test",
                    audience="headwater-origin", lifetime_s=600, clients=ClientRegistry({}))
    verifier = AccessTokenVerifier(lambda: [issuer.access_key], issuer="https://origin.test",
                                   audience="headwater-origin", clock=clock.time)

    async def handler(request: Request, args: tuple[str, ...]) -> Response:
        if args[0] == "boom":
            raise RuntimeError("a bug")
        return json_response(200, {"ok": True})

    registry = Registry()
    app = OriginApp(verifier=verifier, uploads=service(tmp_path, clock), issuer=None, clock=clock,
                    routes=[Route.of("GET", r"/api/things/(\w+)", handler)], registry=registry)

    def get(path: str) -> Request:
        return Request(method="GET", target=path, path=path, query="", headers=Headers([]), body=Body(b""))

    assert sample(registry, "hw_origin_responses_total", code="5xx") == 0  # present before any request
    statuses = [(await app(get(p))).status for p in ("/api/things/a", "/api/things/b", "/nowhere",
                                                     "/api/things/boom")]
    assert statuses == [200, 200, 404, 500]
    assert [sample(registry, "hw_origin_responses_total", code=c) for c in ("2xx", "4xx", "5xx")] == [2, 1, 1]


async def test_queue_gauges_age_the_oldest_ready_job_between_passes():
    clock = FakeClock()
    queue: dict[str, tuple[int, float]] = {}
    registry = Registry()
    gauges = JobQueueGauges(lambda: dict(queue), registry, kinds=("transcode",), clock=clock)
    assert sample(registry, "hw_origin_jobs_ready", kind="transcode") == 0
    assert sample(registry, "hw_origin_jobs_oldest_ready_seconds", kind="transcode") == 0
    queue.update({"transcode": (3, clock.time() - 40), "cdn-purge": (1, clock.time())})
    clock.advance(100)  # not read yet: still empty
    assert sample(registry, "hw_origin_jobs_ready", kind="transcode") == 0
    assert await gauges.run_once() == 4
    assert sample(registry, "hw_origin_jobs_ready", kind="transcode") == 3
    assert sample(registry, "hw_origin_jobs_oldest_ready_seconds", kind="transcode") == 140
    assert sample(registry, "hw_origin_jobs_oldest_ready_seconds", kind="cdn-purge") == 100
    clock.advance(20)  # between passes the age grows on the clock
    assert sample(registry, "hw_origin_jobs_oldest_ready_seconds", kind="transcode") == 160
    queue.clear()
    await gauges.run_once()
    assert sample(registry, "hw_origin_jobs_ready", kind="transcode") == 0
    assert sample(registry, "hw_origin_jobs_oldest_ready_seconds", kind="cdn-purge") == 0
