"""The Prometheus text exposition format 0.0.4, byte for byte."""

import math

import pytest

from headwater.metrics import CONTENT_TYPE, Registry, add_process_metrics, format_value


def test_counter_and_gauge_render_exactly():
    reg = Registry()
    req = reg.counter("hw_requests_total", "Requests answered.", labels=("method", "status"))
    req.labels(method="GET", status="200").inc()
    req.labels("GET", "200").inc(2)
    req.labels(method="PUT", status="500").inc(0.5)
    conns = reg.gauge("hw_connections", "Open connections.")
    conns.inc(3)
    conns.dec()
    assert reg.render() == (
        "# HELP hw_requests_total Requests answered.\n"
        "# TYPE hw_requests_total counter\n"
        'hw_requests_total{method="GET",status="200"} 3\n'
        'hw_requests_total{method="PUT",status="500"} 0.5\n'
        "# HELP hw_connections Open connections.\n"
        "# TYPE hw_connections gauge\n"
        "hw_connections 2\n"
    )


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    reg = Registry()
    h = reg.histogram("hw_latency_seconds", "Request latency.", labels=("op",), buckets=(0.1, 1, 0.5))
    child = h.labels(op="get")
    for v in (0.05, 0.1, 0.3, 2.0):
        child.observe(v)
    assert reg.render() == (
        "# HELP hw_latency_seconds Request latency.\n"
        "# TYPE hw_latency_seconds histogram\n"
        'hw_latency_seconds_bucket{op="get",le="0.1"} 2\n'
        'hw_latency_seconds_bucket{op="get",le="0.5"} 3\n'
        'hw_latency_seconds_bucket{op="get",le="1.0"} 3\n'
        'hw_latency_seconds_bucket{op="get",le="+Inf"} 4\n'
        'hw_latency_seconds_sum{op="get"} 2.45\n'
        'hw_latency_seconds_count{op="get"} 4\n'
    )


def test_unlabelled_histogram_and_timer():
    reg = Registry()
    h = reg.histogram("hw_size_bytes", "Sizes.", buckets=(10,))
    h.observe(10)
    with h.time():
        pass
    text = reg.render()
    assert 'hw_size_bytes_bucket{le="10.0"} 2\n' in text
    assert 'hw_size_bytes_bucket{le="+Inf"} 2\n' in text
    assert "hw_size_bytes_count 2\n" in text


def test_label_values_and_help_are_escaped():
    reg = Registry()
    c = reg.counter("hw_odd_total", 'Help with \\ and\nnewline "quotes" kept.', labels=("key",))
    c.labels(key='a"b\\c\nd').inc()
    assert reg.render() == (
        '# HELP hw_odd_total Help with \\\\ and\\nnewline "quotes" kept.\n'
        "# TYPE hw_odd_total counter\n"
        'hw_odd_total{key="a\\"b\\\\c\\nd"} 1\n'
    )


def test_collectors_fill_gauges_at_scrape_time_and_failures_do_not_break_it():
    errors = []
    reg = Registry(on_collector_error=errors.append)
    free = reg.gauge("hw_disk_free_bytes", "Free bytes.", labels=("node",))
    calls = []

    def collect():
        calls.append(1)
        free.labels("storage-1").set(1024 * len(calls))

    def broken():
        raise RuntimeError("disk gone")

    reg.add_collector(collect)
    reg.add_collector(broken)
    assert 'hw_disk_free_bytes{node="storage-1"} 1024\n' in reg.render()
    assert 'hw_disk_free_bytes{node="storage-1"} 2048\n' in reg.render()
    assert [str(e) for e in errors] == ["disk gone", "disk gone"]


def test_values():
    assert format_value(3) == "3"
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert format_value(1e20) == "1e+20"


def test_registration_rules():
    reg = Registry()
    a = reg.counter("hw_x_total", "X.", labels=("a",))
    assert reg.counter("hw_x_total", "X again.", labels=("a",)) is a
    with pytest.raises(ValueError):
        reg.gauge("hw_x_total", "X.", labels=("a",))
    with pytest.raises(ValueError):
        reg.counter("hw_x_total", "X.", labels=("b",))
    with pytest.raises(ValueError):
        reg.counter("bad-name", "?")
    with pytest.raises(ValueError):
        reg.counter("hw_y_total", "?", labels=("__reserved",))
    with pytest.raises(ValueError):
        reg.histogram("hw_h", "?", labels=("le",))
    with pytest.raises(ValueError):
        a.inc()  # labelled metric needs .labels()
    with pytest.raises(ValueError):
        a.labels(a="1").inc(-1)
    with pytest.raises(ValueError):
        a.labels(b="1")
    with pytest.raises(ValueError):
        a.labels("1", "2")


def test_remove_and_clear_label_sets():
    reg = Registry()
    g = reg.gauge("hw_g", "G.", labels=("n",))
    g.labels("1").set(1)
    g.labels("2").set(2)
    g.remove("1")
    assert reg.render().endswith('hw_g{n="2"} 2\n')
    g.clear()
    assert reg.render() == "# HELP hw_g G.\n# TYPE hw_g gauge\n"


def test_process_metrics_are_present():
    reg = Registry()
    add_process_metrics(reg)
    text = reg.render()
    for name in ("process_start_time_seconds", "process_cpu_seconds_total",
                 "process_resident_memory_bytes", "process_open_fds"):
        assert f"\n{name} " in text
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
