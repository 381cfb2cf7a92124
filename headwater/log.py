"""Structured logs: one JSON object per line on stderr.

    log = get_logger("storage-1", level=cluster.log_level)
    log.info("fragment.stored", bucket="b", key="k", bytes=1048576)
    -> {"ts":"2024-05-01T12:00:00.123Z","level":"info","daemon":"storage-1","event":"fragment.stored","bucket":"b",...}

Event names are dotted nouns-and-verbs (``listener.started``, ``child.crashed``); fields are
JSON values (anything else is written as its ``str``). ``bind(**fields)`` returns a logger that
adds those fields to every line (``worker=1``, ``peer=...``).

The standard library's ``logging`` (what ``headwater.http``, ``headwater.rpc`` and the object
store log through) comes out as the same lines once a daemon calls
``configure(level=..., daemon=id)``: a :class:`JsonHandler` on the root logger writes every
``headwater.*`` record at ``level`` and up, and every other library's at ``warning`` and up (at
least). A record maps to a line so:

    log = logging.getLogger("headwater.objstore.metadata.raft")
    log.info("leader of %s is %s", g, n, extra={"event": "raft.leader_changed", "group": g, "leader": n})
    -> {..."level":"info","daemon":"meta-1","event":"raft.leader_changed","group":"g1","leader":"meta-2",
        "msg":"leader of g1 is meta-2"}
    log.warning("peer %s slow", p)
    -> {..."level":"warning","daemon":"meta-1","event":"raft.message","msg":"peer m2 slow"}

``extra={"event": ...}`` names the event and every other ``extra`` key is a field; without it
the event is the logger name's last part + ``.message``. The formatted message is kept as
``msg``; ``exc_info`` (``log.exception``) adds ``error`` and ``traceback`` as
:meth:`Logger.exception` does.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from typing import Any, TextIO

from .clock import Clock

__all__ = ["Logger", "get_logger", "configure", "reset", "JsonHandler", "record_event", "LEVELS"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_RESERVED = ("ts", "level", "daemon", "event")

_default_level = "info"
_default_stream: TextIO | None = None  # None: whatever sys.stderr is at write time
_handler: JsonHandler | None = None  # the stdlib bridge configure() installed, if any
_write_lock = threading.Lock()  # stdlib records may come from worker threads: whole lines only


def configure(*, level: str | None = None, stream: TextIO | None = None, daemon: str | None = None,
              fields: dict[str, Any] | None = None) -> None:
    """Set the process-wide default level and stream for loggers created without their own.

    With ``daemon``, stdlib ``logging`` is routed into this daemon's lines too (a
    :class:`JsonHandler` on the root logger, replacing one installed before; ``fields`` are
    added to each of its lines, e.g. ``worker=1``): ``headwater.*`` records at the default level
    and up, any other logger's at ``warning`` and up; Python warnings are captured as well.
    """
    global _default_level, _default_stream, _handler
    if level is not None:
        _check_level(level)
        _default_level = level
    if stream is not None:
        _default_stream = stream
    if daemon is None:
        if _handler is not None:  # a new level applies to the installed bridge too
            _route_stdlib(_handler)
        return
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = JsonHandler(daemon, stream=stream, context=fields)
    root.addHandler(_handler)
    _route_stdlib(_handler)
    logging.captureWarnings(True)


def _route_stdlib(handler: JsonHandler) -> None:
    threshold = LEVELS[_default_level]
    handler.threshold = threshold
    logging.getLogger(KERNEL_LOGGER).setLevel(threshold)
    logging.getLogger().setLevel(max(threshold, logging.WARNING))


def reset() -> None:
    """Undo :func:`configure` (for tests): default level and stream, no stdlib bridge."""
    global _default_level, _default_stream, _handler
    _default_level, _default_stream = "info", None
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
        logging.getLogger(KERNEL_LOGGER).setLevel(logging.NOTSET)
        logging.getLogger().setLevel(logging.WARNING)
        logging.captureWarnings(False)


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")


def _iso(ts: float) -> str:
    whole = int(ts)
    ms = int((ts - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def _line(ts: float, level: str, daemon: str, event: str, *sources: dict[str, Any]) -> str:
    record: dict[str, Any] = {"ts": _iso(ts), "level": level, "daemon": daemon, "event": event}
    for source in sources:
        for k, v in source.items():
            record[f"field_{k}" if k in _RESERVED else k] = v
    return json.dumps(record, default=str, separators=(",", ":"), ensure_ascii=False) + "\n"


def _write(stream: TextIO | None, line: str) -> None:
    stream = stream or _default_stream or sys.stderr
    try:
        with _write_lock:
            stream.write(line)
            stream.flush()
    except (OSError, ValueError):  # a closed or broken stderr must not crash the daemon
        pass


def _error_fields(exc: BaseException) -> dict[str, str]:
    return {"error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc)).rstrip()}


class Logger:
    """Writes events for one daemon. Cheap when the level filters the line out."""

    __slots__ = ("daemon", "_threshold", "_stream", "_clock", "_context")

    def __init__(self, daemon: str, *, level: str | None = None, stream: TextIO | None = None,
                 clock: Clock | None = None, context: dict[str, Any] | None = None) -> None:
        if level is not None:
            _check_level(level)
        self.daemon = daemon
        self._threshold = LEVELS[level] if level is not None else None
        self._stream = stream
        self._clock = clock
        self._context = context or {}

    @property
    def level(self) -> str:
        threshold = self._threshold if self._threshold is not None else LEVELS[_default_level]
        return next(name for name, n in LEVELS.items() if n == threshold)

    def enabled(self, level: str) -> bool:
        threshold = self._threshold if self._threshold is not None else LEVELS[_default_level]
        return LEVELS[level] >= threshold

    def bind(self, **fields: Any) -> "Logger":
        """A logger for the same daemon that adds ``fields`` to every line."""
        child = Logger(self.daemon, stream=self._stream, clock=self._clock,
                       context={**self._context, **fields})
        child._threshold = self._threshold
        return child

    def log(self, level: str, event: str, /, **fields: Any) -> None:
        if not self.enabled(level):
            return
        now = self._clock.time() if self._clock is not None else time.time()
        _write(self._stream, _line(now, level, self.daemon, event, self._context, fields))

    def debug(self, event: str, /, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, /, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, /, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, /, **fields: Any) -> None:
        self.log("error", event, **fields)

    def exception(self, event: str, /, exc: BaseException | None = None, **fields: Any) -> None:
        """An error line carrying the exception (the one being handled, if ``exc`` is None)."""
        if exc is None:
            exc = sys.exc_info()[1]
        if exc is not None:
            fields.update(_error_fields(exc))
        self.log("error", event, **fields)


def get_logger(daemon_id: str, *, level: str | None = None, stream: TextIO | None = None,
               clock: Clock | None = None) -> Logger:
    """A logger for ``daemon_id``; ``level`` defaults to the process-wide one (see ``configure``)."""
    return Logger(daemon_id, level=level, stream=stream, clock=clock)


# --- the stdlib bridge -------------------------------------------------------------------------

KERNEL_LOGGER = "headwater"  # every logger of the code base is below this one
# What a LogRecord holds of its own; anything else on it came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def level_name(levelno: int) -> str:
    """This module's level for a stdlib level number (critical is ``error``)."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def record_event(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The event name and fields of a stdlib record (see the module docstring)."""
    fields = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
    event = fields.pop("event", None)
    if not isinstance(event, str) or not event:
        event = record.name.rsplit(".", 1)[-1] + ".message"
    try:
        msg = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must still leave a line
        msg = f"{record.msg!s} % {record.args!r}"
    if msg and msg != event:
        fields["msg"] = msg
    if record.exc_info and record.exc_info[1] is not None:
        fields.update(_error_fields(record.exc_info[1]))
    if record.stack_info:
        fields["stack"] = record.stack_info
    return event, fields


class JsonHandler(logging.Handler):
    """Writes stdlib ``logging`` records as one daemon's JSON lines.

    ``threshold``: records of ``headwater.*`` loggers pass at this level number and up, any other
    logger's at ``max(threshold, WARNING)`` (a chatty library stays quiet at ``info``).
    """

    def __init__(self, daemon: str, *, stream: TextIO | None = None, clock: Clock | None = None,
                 context: dict[str, Any] | None = None, threshold: int = logging.INFO) -> None:
        super().__init__()
        self.daemon = daemon
        self.threshold = threshold
        self._stream = stream
        self._clock = clock
        self._context = context or {}

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == KERNEL_LOGGER or record.name.startswith(KERNEL_LOGGER + ".")
        floor = self.threshold if ours else max(self.threshold, logging.WARNING)
        return record.levelno >= floor and bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event, fields = record_event(record)
            now = self._clock.time() if self._clock is not None else record.created
            _write(self._stream, _line(now, level_name(record.levelno), self.daemon, event, self._context, fields))
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)
