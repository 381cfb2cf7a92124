"""The kernel's reading of a /healthz answer (headwater/health.py)."""

from __future__ import annotations

import pytest

from headwater.health import Health, health_of


@pytest.mark.parametrize("code, doc, health", [
    (200, {"status": "ok", "pid": 1}, Health.OK),
    (503, {"status": "degraded", "error": "catalogue database: refused"}, Health.DEGRADED),
    (503, {"status": "starting"}, Health.DOWN),       # a metadata node before its quorum
    (503, {"status": "catching_up"}, Health.DOWN),    # an edge replaying purges
    (503, {"status": "error", "error": "boom"}, Health.DOWN),
    (200, {"status": "degraded"}, Health.DOWN),       # not the admin endpoint's answer: not trusted
    (503, {"status": "ok"}, Health.DOWN),
    (200, ["ok"], Health.DOWN),
    (200, None, Health.DOWN),                         # not JSON
    (502, {"status": "degraded"}, Health.DOWN),       # a proxy's error page, say
])
def test_health_of(code, doc, health):
    assert health_of(code, doc) is health


def test_only_ok_and_degraded_count_as_started():
    assert [h for h in Health if h.started] == [Health.OK, Health.DEGRADED]
