"""A small Prometheus client: counters, gauges and histograms with labels, rendered as text 0.0.4.

Hot paths keep the child for their label values and call ``inc()`` / ``observe()`` on it: one
attribute update, no lock. A daemon is one process on one event-loop thread, so that is safe;
code running in worker threads should hand its numbers back to the loop rather than increment
from the thread.

    registry = Registry()
    requests = registry.counter("hw_http_requests_total", "HTTP requests answered.",
                                labels=("method", "status"))
    requests.labels(method="GET", status="200").inc()

    free = registry.gauge("hw_disk_free_bytes", "Free bytes on the data directory's disk.")
    registry.add_collector(lambda: free.set(shutil.disk_usage(path).free))

    text = registry.render()
"""

from __future__ import annotations

import math
import os
import re
import time
from bisect import bisect_left
from typing import Callable, Iterable, Sequence

__all__ = [
    "Registry",
    "Counter",
    "Gauge",
    "Histogram",
    "DEFAULT_BUCKETS",
    "CONTENT_TYPE",
    "add_process_metrics",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def format_value(value: float) -> str:
    """A sample value as Prometheus text: integers without a fraction, +Inf/-Inf/NaN spelled out."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _format_le(bound: float) -> str:
    # Bucket bounds follow the Go client's spelling ("1.0", "0.25", "+Inf") so dashboards match.
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL_RE.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate label names for {name}")
        self.name = name
        self.help = help
        self.label_names: tuple[str, ...] = tuple(labels)
        self._children: dict[tuple[str, ...], object] = {}
        self._unlabelled = None if labels else self._new_child()
        if self._unlabelled is not None:
            self._children[()] = self._unlabelled

    def _new_child(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def labels(self, *values: object, **kw: object):
        """The child for these label values (positional in declared order, or by name)."""
        if kw:
            if values:
                raise ValueError("pass label values positionally or by name, not both")
            try:
                values = tuple(kw[n] for n in self.label_names)
            except KeyError as e:
                raise ValueError(f"{self.name}: missing label {e.args[0]!r}") from None
            if len(kw) != len(self.label_names):
                unknown = set(kw) - set(self.label_names)
                raise ValueError(f"{self.name}: unknown labels {sorted(unknown)}")
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {len(values)} values")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if not self.label_names:
                raise ValueError(f"{self.name} has no labels")
            child = self._children[key] = self._new_child()
        return child

    def remove(self, *values: object) -> None:
        """Forget one label combination (a node that left, a bucket deleted)."""
        self._children.pop(tuple(str(v) for v in values), None)

    def clear(self) -> None:
        """Forget every label combination (collectors that rebuild a gauge family each scrape)."""
        if self.label_names:
            self._children.clear()

    def _require_unlabelled(self):
        if self._unlabelled is None:
            raise ValueError(f"{self.name} has labels {self.label_names}: use .labels(...) first")
        return self._unlabelled

    def _samples(self) -> Iterable[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(self._samples())


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class _ValueMetric(_Metric):
    """A metric whose children each hold one number (counters and gauges)."""

    def _samples(self) -> Iterable[str]:
        for key, child in self._children.items():
            yield f"{self.name}{_label_text(self.label_names, key)} {format_value(child.value)}\n"


class Counter(_ValueMetric):
    """A value that only goes up (requests, bytes, errors). Name it ``..._total``."""

    kind = "counter"

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1) -> None:
        self._require_unlabelled().inc(amount)

    @property
    def value(self) -> float:
        return self._require_unlabelled().value



class _GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class Gauge(_ValueMetric):
    """A value that goes up and down (connections open, bytes free)."""

    kind = "gauge"

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: float) -> None:
        self._require_unlabelled().set(value)

    def inc(self, amount: float = 1) -> None:
        self._require_unlabelled().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._require_unlabelled().dec(amount)

    @property
    def value(self) -> float:
        return self._require_unlabelled().value



class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum: float = 0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def time(self) -> "_Timer":
        """``with hist.time(): ...`` observes the block's duration in seconds."""
        return _Timer(self)


class _Timer:
    __slots__ = ("_child", "_start")

    def __init__(self, child: _HistogramChild) -> None:
        self._child = child
        self._start = 0.0

    def __enter__(self) -> "_Timer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._child.observe(time.perf_counter() - self._start)


class Histogram(_Metric):
    """Observations counted into buckets (latencies, sizes), with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds:
            raise ValueError(f"{name}: a histogram needs at least one finite bucket")
        if len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: duplicate bucket bounds")
        if "le" in labels:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.bounds = tuple(bounds)
        super().__init__(name, help, labels)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._require_unlabelled().observe(value)

    def time(self) -> _Timer:
        return self._require_unlabelled().time()

    def _samples(self) -> Iterable[str]:
        names = self.label_names
        for key, child in self._children.items():
            running = 0
            for bound, n in zip((*self.bounds, math.inf), child.counts):
                running += n
                le = f'le="{_format_le(bound)}"'
                yield f"{self.name}_bucket{_label_text(names, key, le)} {running}\n"
            labels = _label_text(names, key)
            yield f"{self.name}_sum{labels} {format_value(child.sum)}\n"
            yield f"{self.name}_count{labels} {child.count}\n"


class Registry:
    """The metrics of one process, rendered in registration order.

    Registering the same name again with the same kind and labels returns the existing metric,
    so two modules may both declare what they share; anything else is a ValueError.
    """

    def __init__(self, *, on_collector_error: Callable[[BaseException], None] | None = None) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []
        self._on_collector_error = on_collector_error

    def _register(self, metric: _Metric) -> _Metric:
        existing = self._metrics.get(metric.name)
        if existing is not None:
            if type(existing) is type(metric) and existing.label_names == metric.label_names:
                return existing
            raise ValueError(f"metric {metric.name!r} is already registered as a different "
                             f"{existing.kind} with labels {existing.label_names}")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, *, labels: Sequence[str] = ()) -> Counter:
        return self._register(Counter(name, help, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, *, labels: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge(name, help, labels))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, *, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._register(Histogram(name, help, labels, buckets))  # type: ignore[return-value]

    def get(self, name: str) -> _Metric | None:
        return self._metrics.get(name)

    def add_collector(self, collect: Callable[[], None]) -> None:
        """Call ``collect()`` at the start of every render, to fill gauges (free disk, queue depth).

        A collector that raises is reported to ``on_collector_error`` and the scrape goes on with
        the values it had.
        """
        self._collectors.append(collect)

    def collect(self) -> None:
        for collect in self._collectors:
            try:
                collect()
            except Exception as e:  # a broken collector must not take /metrics down
                if self._on_collector_error is not None:
                    self._on_collector_error(e)

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format 0.0.4."""
        self.collect()
        return "".join(m.render() for m in self._metrics.values())


def add_process_metrics(registry: Registry, *, prefix: str = "process") -> None:
    """The usual process_* gauges (start time, CPU, resident memory, open fds), read from /proc."""
    start = registry.gauge(f"{prefix}_start_time_seconds", "Start time of the process since the epoch, in seconds.")
    cpu = registry.gauge(f"{prefix}_cpu_seconds_total", "Total user and system CPU time spent, in seconds.")
    rss = registry.gauge(f"{prefix}_resident_memory_bytes", "Resident memory size in bytes.")
    fds = registry.gauge(f"{prefix}_open_fds", "Number of open file descriptors.")
    start.set(time.time() - time.monotonic() + _process_start_monotonic())
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def collect() -> None:
        t = os.times()
        cpu.set(t.user + t.system)
        try:
            with open("/proc/self/statm", "rb") as f:
                rss.set(int(f.read().split()[1]) * page)
            fds.set(len(os.listdir("/proc/self/fd")))
        except OSError:
            pass

    registry.add_collector(collect)


def _process_start_monotonic() -> float:
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        # field 22 (starttime) is the 20th after the command name; seconds since boot
        started_since_boot = int(fields[19]) / ticks
        return time.monotonic() - (uptime - started_since_boot)
    except (OSError, ValueError, IndexError):
        return time.monotonic()
