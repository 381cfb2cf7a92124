"""What the HTTP/1.1 and HTTP/2 shells share about one exchange: running the app, the core's own
error answers, request bodies' ``read_all``, FileBody regions, and letting go of responses.

Errors meet the wire here: an ``HttpError`` escaping the app is answered with its
``http_status`` (a ``ProtocolError`` also closes the connection), anything else with 500.
"""

from __future__ import annotations

import logging
import os
from typing import Any, AsyncIterator, Callable

import anyio
import anyio.to_thread

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import HttpLimits, KiB
from headwater.http import h1
from headwater.http.errors import ClientDisconnected, HttpError, LocalProtocolError, ProtocolError
from headwater.http.transport import RECV_BYTES
from headwater.http.types import App, BodyTooLarge, FileBody, Request, Response

__all__ = ["Service", "BodyReading", "NoBody", "NO_BODY", "OpenFile", "error_response", "split_target", "address",
           "aclose_iterable", "discard_body", "override_for_broken_body", "report_sent", "SHUTDOWN_GRACE_S"]

log = logging.getLogger("headwater.http")

FILE_CHUNK_BYTES = 256 * KiB
SHUTDOWN_GRACE_S = 1.0


def error_response(status: int, detail: str = "") -> Response:
    """The plain-text answer the core gives on its own (400, 408, 413, 431, 500, ...)."""
    text = f"{status} {h1.reason_phrase(status)}\n"
    if detail:
        text += detail + "\n"
    return Response(status=status, headers=[("content-type", "text/plain; charset=utf-8")],
                    body=text.encode())


def report_sent(hook: Callable[[bool], None], sent: bool) -> None:
    """Call a response's ``on_sent`` hook; what it raises is the app's fault, logged here, so
    that a broken hook cannot break the connection it reports on."""
    try:
        hook(sent)
    except Exception:
        log.exception("a response's on_sent hook failed")


def split_target(target: str) -> tuple[str, str]:
    if target[:1] != "/" and "://" in target:  # absolute-form
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    path, _, query = target.partition("?")
    return path, query


def address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


class Service:
    """What every connection of one ``serve`` shares: the app, the limits, the clock.

    ``answers_now``: whether the app also answers synchronously (``answer_now``, see ``App``), so
    the HTTP/1.1 shell may answer a lone request without a body straight from the loop's read
    callback (``H1Shell``'s inline answers). ``on_flood(peer, kind)``: called when an HTTP/2
    connection is ended for flooding (GOAWAY ENHANCE_YOUR_CALM), with the kind of frame that
    spent its budget (``h2.ConnectionEnded.flood``), for a daemon's metrics.
    """

    __slots__ = ("app", "limits", "clock", "answers_now", "_answer_now", "on_flood")

    def __init__(self, app: App, limits: HttpLimits, clock: Clock = SYSTEM_CLOCK,
                 on_flood: Callable[[tuple[str, int] | None, str], None] | None = None) -> None:
        self.app = app
        self.limits = limits
        self.clock = clock
        self.on_flood = on_flood
        self._answer_now = getattr(app, "answer_now", None)
        self.answers_now = self._answer_now is not None

    def answer_now(self, request: Request) -> tuple[Response, bool] | None:
        """The app's synchronous answer to ``request`` and whether to close, as ``run_app`` would
        give them; None when the app has none (it then did nothing: ``run_app`` follows)."""
        try:
            response = self._answer_now(request)  # type: ignore[misc]
            if response is None:
                return None
            if type(response) is not Response and not isinstance(response, Response):
                raise TypeError(f"answer_now returned {type(response).__name__}, not a Response")
            if type(response.body) is not bytes:
                raise TypeError("answer_now answers with a bytes body only")
            return response, False
        except Exception as e:
            return self._failed(request, e)

    async def call(self, request: Request,
                   scope: anyio.CancelScope | None = None) -> tuple[Response | None, bool]:
        """Run the app; (response, close). None when the client is gone (nothing to write).

        ``scope`` is what a request body cancels when the client vanishes mid-body; a request
        without a body needs none (entering a scope costs as much as a small app).
        """
        if scope is None:
            return await self.run_app(request)
        response: Response | None = None
        with scope:
            response, close = await self.run_app(request)
        if scope.cancelled_caught:
            if response is not None:
                await discard_body(response.body)
            return None, True
        return response, close

    async def run_app(self, request: Request) -> tuple[Response | None, bool]:
        """``call`` without a scope."""
        try:
            response = await self.app(request)
            if type(response) is not Response and not isinstance(response, Response):
                raise TypeError(f"the app returned {type(response).__name__}, not a Response")
            return response, False
        except ClientDisconnected:
            return None, True
        except Exception as e:
            return self._failed(request, e)

    @staticmethod
    def _failed(request: Request, e: Exception) -> tuple[Response, bool]:
        """The answer for an exception that escaped the app, and whether to close."""
        if isinstance(e, HttpError):
            if not isinstance(e, ProtocolError):
                log.error("app failed on %s %s", request.method, request.target, exc_info=e)
            return error_response(e.http_status), isinstance(e, ProtocolError)
        log.error("app failed on %s %s", request.method, request.target, exc_info=e)
        return error_response(500), False


async def override_for_broken_body(response: Response, failed: ProtocolError | None) -> Response:
    """The answer to a request whose body broke the protocol (bad chunk, too slow, too large).

    An app that meets such an error in ``receive`` and answers 5xx itself (it saw an exception
    it did not know) blamed itself for the client's fault: the core answers the error's own
    status instead. A 2xx-4xx answer of the app's stands (the connection closes either way).
    """
    if failed is None or response.status < 500:
        return response
    await discard_body(response.body)
    return error_response(failed.http_status, str(failed))


class BodyReading:
    """What both protocols' request bodies build on ``receive`` and ``content_length``."""

    __slots__ = ()

    content_length: int | None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise NotImplementedError

    async def read_all(self, limit: int) -> bytes:
        declared = self.content_length
        if declared is not None and declared > limit:
            raise BodyTooLarge(f"body of {declared} bytes exceeds {limit}")
        parts: list[bytes] = []
        total = 0
        while chunk := await self.receive(RECV_BYTES):
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge(f"body exceeds {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.receive(RECV_BYTES):
            yield chunk


class NoBody(BodyReading):
    """The body of a request that has none: every read is the end."""

    __slots__ = ()

    expects_continue = False
    content_length: int | None = 0
    done = True
    disconnected = False
    failed: ProtocolError | None = None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return b""


NO_BODY = NoBody()


class OpenFile:
    """An open FileBody: the region to send, validated against the file's size.

    A FileBody's own ``fd`` is taken over (closed by ``close``); otherwise ``path`` is opened.
    """

    def __init__(self, body: FileBody) -> None:
        if body.fd is not None:
            self.fd = body.fd
        else:
            self.fd = os.open(os.fspath(body.path), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(self.fd).st_size
            self.offset = body.offset
            self.length = size - body.offset if body.length is None else body.length
            if self.offset < 0 or self.length < 0 or self.offset + self.length > size:
                raise LocalProtocolError(f"FileBody region {body.offset}+{body.length} is outside "
                                         f"{os.fspath(body.path)} ({size} bytes)")
        except BaseException:
            os.close(self.fd)
            raise

    async def chunks(self) -> AsyncIterator[bytes]:
        offset, left = self.offset, self.length
        while left > 0:
            data = await anyio.to_thread.run_sync(os.pread, self.fd, min(left, FILE_CHUNK_BYTES), offset)
            if not data:
                raise LocalProtocolError("file shorter than the response claimed (truncated?)")
            offset += len(data)
            left -= len(data)
            yield data

    def close(self) -> None:
        os.close(self.fd)


async def aclose_iterable(body: Any) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            try:
                await aclose()
            except Exception:
                log.exception("closing the response body iterator failed")


async def discard_body(body: Any) -> None:
    """Let go of a response body that will not be sent: close its iterator or its file."""
    if isinstance(body, FileBody):
        if body.fd is not None:
            try:
                os.close(body.fd)
            except OSError:
                pass
    elif not isinstance(body, (bytes, bytearray, memoryview)):
        await aclose_iterable(body)
