"""``[dns.health]``: how the GeoDNS probes its POPs. Every health default lives here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from headwater.config import KiB, Reader

__all__ = ["HealthConfig", "read_health"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """Probe every POP's ``/healthz`` every ``interval_s``, each probe bounded by ``timeout_s``.

    A POP goes down after ``fall`` failed probes in a row and comes back after ``rise`` good
    ones, so it leaves answers within about ``interval_s * fall`` of failing.
    """

    interval_s: float = 2.0
    timeout_s: float = 1.0
    rise: int = 2
    fall: int = 2
    # At most this much of a /healthz body is read, for its JSON `load`; past it the probe stops
    # reading, the status alone decides and the load counts as not reported.
    max_body_bytes: int = 4 * KiB


def read_health(r: Reader, data: Mapping[str, Any], prefix: str = "dns.health") -> HealthConfig:
    """``[dns.health]``: ``interval_seconds``, ``timeout_seconds``, ``rise``, ``fall``."""
    if not isinstance(data, dict):
        raise r.error(prefix, "expected a table")
    r.check_keys(data, prefix, {"interval_seconds", "timeout_seconds", "rise", "fall"})
    d = HealthConfig()
    interval = r.positive(data, "interval_seconds", prefix, d.interval_s)
    timeout = r.positive(data, "timeout_seconds", prefix, d.timeout_s)
    if timeout > interval:
        # A probe still running when the next is due would pile probes up on a slow POP.
        raise r.error(f"{prefix}.timeout_seconds",
                      f"{timeout:g} s is longer than interval_seconds ({interval:g} s)")
    if interval > 3600:
        raise r.error(f"{prefix}.interval_seconds", f"{interval:g} s is over an hour: a dead POP would stay in answers")
    counts = {}
    for key, default in (("rise", d.rise), ("fall", d.fall)):
        value = r.get(data, key, prefix, int, default)
        if not 1 <= value <= 100:
            raise r.error(f"{prefix}.{key}", f"{value} is outside 1..100 probes")
        counts[key] = value
    return HealthConfig(interval_s=interval, timeout_s=timeout, rise=counts["rise"], fall=counts["fall"])
