"""Structured logs: one JSON object per line on stderr.

    log = get_logger("storage-1", level=cluster.log_level)
    log.info("fragment.stored", bucket="b", key="k", bytes=1048576)
    -> {"ts":"2024-05-01T12:00:00.123Z","level":"info","daemon":"storage-1","event":"fragment.stored","bucket":"b",...}

Event names are dotted nouns-and-verbs (``listener.started``, ``child.crashed``); fields are
JSON values (anything else is written as its ``str``). ``bind(**fields)`` returns a logger that
adds those fields to every line (``worker=1``, ``peer=...``).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any, TextIO

from .clock import Clock

__all__ = ["Logger", "get_logger", "configure", "LEVELS"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_RESERVED = ("ts", "level", "daemon", "event")

_default_level = "info"
_default_stream: TextIO | None = None  # None: whatever sys.stderr is at write time


def configure(*, level: str | None = None, stream: TextIO | None = None) -> None:
    """Set the process-wide default level and stream for loggers created without their own."""
    global _default_level, _default_stream
    if level is not None:
        _check_level(level)
        _default_level = level
    if stream is not None:
        _default_stream = stream


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")


def _iso(ts: float) -> str:
    whole = int(ts)
    ms = int((ts - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


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
        record: dict[str, Any] = {"ts": _iso(now), "level": level, "daemon": self.daemon, "event": event}
        for source in (self._context, fields):
            for k, v in source.items():
                record[f"field_{k}" if k in _RESERVED else k] = v
        line = json.dumps(record, default=str, separators=(",", ":"), ensure_ascii=False) + "\n"
        stream = self._stream or _default_stream or sys.stderr
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not crash the daemon
            pass

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
            fields["error"] = f"{type(exc).__name__}: {exc}"
            fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
        self.log("error", event, **fields)


def get_logger(daemon_id: str, *, level: str | None = None, stream: TextIO | None = None,
               clock: Clock | None = None) -> Logger:
    """A logger for ``daemon_id``; ``level`` defaults to the process-wide one (see ``configure``)."""
    return Logger(daemon_id, level=level, stream=stream, clock=clock)
