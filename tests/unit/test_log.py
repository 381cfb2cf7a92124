"""Structured logs: the daemon's own Logger and stdlib ``logging`` come out as the same JSON lines."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import warnings

import pytest

from headwater import log
from headwater.clock import FakeClock


@pytest.fixture
def stream():
    out = io.StringIO()
    yield out
    log.reset()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_logger_line_shape(stream):
    clock = FakeClock(start=1_700_000_000.25)
    logger = log.get_logger("storage-1", level="debug", stream=stream, clock=clock).bind(worker=1)
    logger.info("fragment.stored", bucket="b", bytes=10, event="clash")
    [line] = lines(stream)
    assert line == {"ts": "2023-11-14T22:13:20.250Z", "level": "info", "daemon": "storage-1",
                    "event": "fragment.stored", "worker": 1, "bucket": "b", "bytes": 10, "field_event": "clash"}


def test_percent_style_record_becomes_a_message_event(stream):
    log.configure(level="info", stream=stream, daemon="meta-1")
    logging.getLogger("headwater.objstore.metadata.raft").info("group %s: leader is %s", "g1", "meta-2")
    [line] = lines(stream)
    assert line["daemon"] == "meta-1" and line["level"] == "info"
    assert line["event"] == "raft.message" and line["msg"] == "group g1: leader is meta-2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])


def test_extra_event_and_fields_map_directly(stream):
    log.configure(level="info", stream=stream, daemon="meta-1", fields={"worker": 0})
    logging.getLogger("headwater.objstore.metadata.raft").info(
        "leader is now %s", "meta-2",
        extra={"event": "raft.leader_changed", "group": "g1", "term": 3, "leader": "meta-2", "daemon": "x"})
    [line] = lines(stream)
    assert line["event"] == "raft.leader_changed"
    assert (line["group"], line["term"], line["leader"]) == ("g1", 3, "meta-2")
    assert line["msg"] == "leader is now meta-2" and line["worker"] == 0
    assert line["daemon"] == "meta-1" and line["field_daemon"] == "x"  # a field never hides the daemon


def test_exception_carries_error_and_traceback(stream):
    log.configure(level="info", stream=stream, daemon="s3")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("headwater.http").exception("app failed on %s %s", "GET", "/b/k")
    [line] = lines(stream)
    assert line["level"] == "error" and line["event"] == "http.message"
    assert line["msg"] == "app failed on GET /b/k" and line["error"] == "ValueError: boom"
    assert line["traceback"].startswith("Traceback") and "ValueError: boom" in line["traceback"]


def test_critical_maps_to_error_and_a_bad_format_still_logs(stream):
    log.configure(level="info", stream=stream, daemon="s3")
    logging.getLogger("headwater.rpc").critical("down")
    [line] = lines(stream)
    assert line["level"] == "error" and line["msg"] == "down"
    # a format bug (built by hand: pytest's own capture handler would fail the test on it)
    bad = logging.LogRecord("headwater.rpc", logging.WARNING, __file__, 1, "%d nodes", ("many",), None)
    event, fields = log.record_event(bad)
    assert event == "rpc.message" and "nodes" in fields["msg"] and "many" in fields["msg"]


def test_log_level_applies_to_both_paths(stream):
    log.configure(level="warning", stream=stream, daemon="storage-1")
    own = log.get_logger("storage-1")
    std = logging.getLogger("headwater.storage")
    own.info("daemon.started")
    std.info("storage node serving")
    std.debug("detail")
    own.warning("disk.slow")
    std.warning("quarantined", extra={"event": "fragment.quarantined", "fid": "x.0"})
    assert [(x["level"], x["event"]) for x in lines(stream)] == [
        ("warning", "disk.slow"), ("warning", "fragment.quarantined")]


def test_debug_level_lets_kernel_debug_through_but_not_third_party_info(stream):
    log.configure(level="debug", stream=stream, daemon="s3")
    logging.getLogger("headwater.http").debug("parsed")
    logging.getLogger("httpx").info("HTTP Request: GET")
    noisy = logging.getLogger("chatty")
    noisy.setLevel(logging.DEBUG)  # a library that turns itself up still gets warning+ only
    noisy.info("hello")
    noisy.warning("careful")
    assert [(x["event"], x["level"]) for x in lines(stream)] == [("http.message", "debug"),
                                                                  ("chatty.message", "warning")]


def test_configure_again_replaces_the_bridge(stream):
    log.configure(level="info", stream=stream, daemon="a")
    log.configure(level="info", stream=stream, daemon="b")
    log.configure(level="error")  # a level change alone reaches the bridge too
    logging.getLogger("headwater.x").warning("dropped")
    logging.getLogger("headwater.x").error("kept")
    [line] = lines(stream)
    assert line["daemon"] == "b" and line["msg"] == "kept"


def test_python_warnings_are_captured(stream):
    log.configure(level="info", stream=stream, daemon="s3")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old api", DeprecationWarning)
    [line] = lines(stream)
    assert line["level"] == "warning" and line["event"] == "warnings.message" and "old api" in line["msg"]


def test_records_from_threads_are_whole_lines(stream):
    log.configure(level="info", stream=stream, daemon="storage-1")
    std = logging.getLogger("headwater.storage")
    own = log.get_logger("storage-1")

    def spam(i: int) -> None:
        for j in range(200):
            std.info("t%d line %d %s", i, j, "x" * 200)
            own.info("own.line", i=i, j=j)

    threads = [threading.Thread(target=spam, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lines(stream)) == 4 * 200 * 2


def test_reset_removes_the_bridge(stream):
    log.configure(level="info", stream=stream, daemon="s3")
    log.reset()
    logging.getLogger("headwater.x").error("after reset")
    assert stream.getvalue() == ""
    assert logging.getLogger("headwater").level == logging.NOTSET
