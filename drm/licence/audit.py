"""The licence audit log: one JSON line per licence granted or refused, and per content key
handed to a packager (``keys.title``, :mod:`..keys.service`).

Each line says when, who (the token's user when it verified, else null), from where (the client
address), which titles and KIDs (KIDs are not secret: they are in every manifest), the outcome,
the reason (the error code and message of a refusal) and, for a grant, the session type and
until when the licence was obtainable under the token's policy. Never a key, never a token:
the event types below have no field that could hold one, and the line is built only from them.

:func:`audit_line` is sans-IO; :class:`AuditLog` appends lines to a file opened ``O_APPEND``
(one ``write`` per line, so lines from several processes never interleave) with mode 0600.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Sequence

from .clearkey import b64url

__all__ = ["LicenceGranted", "LicenceRefused", "KeyServed", "audit_line", "AuditLog"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenceGranted:
    """A licence was answered with keys."""

    time: float
    user: str
    client: str
    titles: Sequence[str]
    kids: Sequence[bytes]
    session_type: str
    licence_end: float
    device: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenceRefused:
    """A licence request was refused; ``status`` and ``code`` are what the client was told."""

    time: float
    client: str
    status: int
    code: str
    reason: str
    user: str | None = None
    titles: Sequence[str] = ()
    kids: Sequence[bytes] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyServed:
    """A title's content key was given (sealed) to a packager that proved the cluster secret."""

    time: float
    title: str
    scheme: str
    kid: bytes
    client: str = "rpc"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


class _SecondStamp:
    """``_iso`` with formatted seconds kept: a busy server logs many lines per second (their
    ``ts`` and, per token, their ``licence_end`` repeat), and strftime + gmtime were a third of
    a line's cost. At most 64 seconds are kept."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds: dict[int, str] = {}

    def __call__(self, t: float) -> str:
        second = int(t // 1)
        text = self.seconds.get(second)
        if text is None:
            if len(self.seconds) >= 64:
                self.seconds.clear()
            text = self.seconds[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{text}.{int(t * 1000) % 1000:03d}Z"


# The C string encoder json.dumps(ensure_ascii=True) uses for every string: the line is
# assembled from fixed, pre-serialised parts and these encoded values, one call per field,
# instead of building a dict and walking it with json.dumps (the same bytes, a third the cost).
_q = encode_basestring_ascii


def _opt(value: str | None) -> str:
    return "null" if value is None else _q(value)


def audit_line(event: LicenceGranted | LicenceRefused | KeyServed, *, iso=_iso) -> bytes:
    """The event as one JSON line (UTF-8, ending in a newline); the same bytes as
    ``json.dumps(doc, separators=(",", ":"), ensure_ascii=True)`` of the fields in the order
    ts, user, client, titles, kids, outcome, then type, licence_end, device (granted),
    status, code, reason (refused) or scheme (key_served: user null)."""
    if isinstance(event, KeyServed):
        return (f'{{"ts":"{iso(event.time)}","user":null,"client":{_q(event.client)},"titles":[{_q(event.title)}],'
                f'"kids":["{b64url(event.kid)}"],"outcome":"key_served","scheme":{_q(event.scheme)}}}\n'
                ).encode("ascii")
    head = (f'{{"ts":"{iso(event.time)}","user":{_opt(event.user)},"client":{_q(event.client)},'
            f'"titles":[{",".join(_q(t) for t in sorted(event.titles))}],'
            f'"kids":[{",".join(chr(34) + b64url(k) + chr(34) for k in event.kids)}],')
    if isinstance(event, LicenceGranted):
        tail = (f'"outcome":"granted","type":{_q(event.session_type)},'
                f'"licence_end":"{iso(event.licence_end)}","device":{_opt(event.device)}}}\n')
    else:
        tail = (f'"outcome":"refused","status":{int(event.status)},"code":{_q(event.code)},'
                f'"reason":{_q(event.reason[:300])}}}\n')
    return (head + tail).encode("ascii")


class AuditLog:
    """Appends audit lines to ``path`` (created 0600, its folder 0700)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.lines = 0
        self._iso = _SecondStamp()

    def record(self, event: LicenceGranted | LicenceRefused | KeyServed) -> None:
        # One unbuffered write per line, as before: the line is in the kernel (it survives a
        # crash of this process, not of the machine) before the answer is sent. Buffering lines
        # would save a few microseconds a licence and lose the last ones on a crash.
        os.write(self._fd, audit_line(event, iso=self._iso))
        self.lines += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
