"""The vocabulary every daemon speaks to the HTTP server core: Request, Response, Headers.

A daemon is an ``App``: ``async def app(request: Request) -> Response``. The core (h1 or h2, plain
or TLS, asyncio or trio) builds the Request, streams its body on demand, and writes the Response.
Daemons never see sockets, parsers or HTTP versions beyond ``request.http_version``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from typing import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, NamedTuple, Protocol

__all__ = ["Headers", "RequestBody", "Request", "Response", "FileBody", "App", "BodyTooLarge", "PreparedFields", "TlsSession",
           "new_request"]


class BodyTooLarge(Exception):
    """Raised by ``RequestBody.read_all`` when the body exceeds the caller's limit."""


class Headers:
    """An ordered multi-map of header fields. Names are compared case-insensitively.

    Stored as a list of ``(lower-case name, value)`` str pairs (latin-1 decoded, as on the wire).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(k.lower(), v) for k, v in items]

    @classmethod
    def from_lower(cls, items: list[tuple[str, str]]) -> Headers:
        """Headers over ``items`` as they are: names already lower case (the parsers' output).
        The list is taken over, not copied."""
        h = cls.__new__(cls)
        h._items = items
        return h

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self._items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self._items if k == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def add(self, name: str, value: str) -> None:
        self._items.append((name.lower(), value))

    def set(self, name: str, value: str) -> None:
        name = name.lower()
        self._items = [(k, v) for k, v in self._items if k != name]
        self._items.append((name, value))

    def remove(self, name: str) -> None:
        name = name.lower()
        self._items = [(k, v) for k, v in self._items if k != name]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class RequestBody(Protocol):
    """The request body, pulled from the connection only as the app asks for it (backpressure).

    If the client sent ``Expect: 100-continue``, the first ``receive`` sends ``100 Continue``; an
    app that answers without reading the body never triggers it, and the core then discards or
    refuses the body as the protocol requires.
    """

    @property
    def expects_continue(self) -> bool: ...

    @property
    def content_length(self) -> int | None:
        """Declared length, or None for a chunked (HTTP/1.1) or length-less (HTTP/2) body."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the body is complete.

        Raises ``ClientDisconnected`` (from headwater.http.errors) if the peer goes away first.
        """

    async def read_all(self, limit: int) -> bytes:
        """The whole body; raises ``BodyTooLarge`` past ``limit`` bytes."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSession:
    """What a TLS connection negotiated, as access logs report it: ``protocol`` as OpenSSL names
    it (``TLSv1.2``, ``TLSv1.3``) and ``cipher`` its OpenSSL cipher name
    (``ECDHE-RSA-AES128-GCM-SHA256``, ``TLS_AES_128_GCM_SHA256``). One per connection."""

    protocol: str
    cipher: str


@dataclass(slots=True, kw_only=True)
class Request:
    """One HTTP request as the app sees it. ``path`` and ``query`` are raw (still %-encoded);
    ``scheme`` is the request's own (HTTP/2's ``:scheme``), ``tls`` the connection's TLS session
    (None on plain TCP)."""

    method: str
    target: str
    path: str
    query: str
    headers: Headers
    body: RequestBody
    http_version: str = "1.1"
    scheme: str = "http"
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None
    host: str = ""
    tls: TlsSession | None = None


_new_object = object.__new__


def new_request(method: str, target: str, path: str, query: str, headers: Headers, body: RequestBody,
                http_version: str, scheme: str, client: tuple[str, int] | None, server: tuple[str, int] | None,
                host: str, tls: TlsSession | None = None) -> Request:
    """``Request(method=..., ...)`` at about a quarter of the cost, for the shells (once per
    request): every field set positionally, without the generated keyword-only ``__init__``'s
    argument handling. The result is the same object."""
    r = _new_object(Request)
    r.method = method
    r.target = target
    r.path = path
    r.query = query
    r.headers = headers
    r.body = body
    r.http_version = http_version
    r.scheme = scheme
    r.client = client
    r.server = server
    r.host = host
    r.tls = tls
    return r


@dataclass(frozen=True, slots=True)
class FileBody:
    """A region of a file, which the core may send with sendfile on plain HTTP/1.1.

    ``fd``, if given, is a file descriptor already open on the file (a cache may evict the path
    between deciding to serve it and the send). The core takes it over: it is closed once the
    response is over, sent or not, and ``path`` then only names the file in logs.
    """

    path: str | PathLike[str] = ""
    offset: int = 0
    length: int | None = None
    fd: int | None = None


class PreparedFields(NamedTuple):
    """Response header fields checked and written out for HTTP/1.1 ahead of time, by an app that
    answers with the same fields many times (the edge's cache hits): made by
    ``headwater.http.h1.prepare_fields`` (which refuses what ``send_response`` would refuse), and
    joined with ``joined``. (A NamedTuple: one is made per response.)"""

    lines: str  # "name: value\r\n" per field, hop-by-hop fields left out
    content_length: int | None  # the content-length among the fields
    has_date: bool
    has_server: bool
    close: bool  # a "connection: close" among the fields

    def joined(self, lines: str, other: PreparedFields) -> PreparedFields:
        """These fields, then ``lines`` (fields the caller wrote out and checked itself, none of
        them hop-by-hop, content-length, date or server), then ``other``'s."""
        if self.content_length is not None and other.content_length is not None:
            raise ValueError("content-length on both sides")
        return PreparedFields(self.lines + lines + other.lines,
                              self.content_length if other.content_length is None else other.content_length,
                              self.has_date or other.has_date, self.has_server or other.has_server,
                              self.close or other.close)


@dataclass(slots=True)
class Response:
    """What the app answers.

    ``body`` is bytes, an async iterable of byte chunks (streamed with backpressure), or a
    FileBody. When ``content-length`` is among the headers a streamed body is sent with it as
    given; otherwise HTTP/1.1 uses chunked encoding. For HEAD requests and 1xx/204/304 statuses
    the core sends no body bytes but keeps the headers (including content-length) as set.

    ``prepared``, when set, is ``headers`` already written out for HTTP/1.1 (the same fields in
    the same order): the HTTP/1.1 core then copies its lines instead of formatting each field.
    Everything else (logs, tests) reads ``headers``; HTTP/2 reads them too, and remembers the
    header block it made of them by ``prepared`` (the same object, the same fields): whoever
    changes ``headers`` after the app made the response must drop ``prepared``.

    ``on_sent``, when set, is called once by the core when the exchange is over: True when the
    response's last byte was handed to the connection (the kernel's socket buffer for HTTP/1.1,
    the connection's outbound queue for HTTP/2: CloudFront's "output queue"), False when it was
    not (the client left, the stream was reset, the request body broke and another answer went
    out). It runs on the connection's task or the loop's read callback: keep it short; an
    exception from it is logged and goes no further.
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | AsyncIterable[bytes] | FileBody = b""
    prepared: PreparedFields | None = None
    on_sent: Callable[[bool], None] | None = None


App = Callable[[Request], Awaitable[Response]]
"""``async def app(request) -> Response``. An app may also have ``answer_now(request) -> Response
| None``: the same answer given without waiting (a bytes body only), or None having done nothing
(the core then awaits the app as usual). The HTTP/1.1 core on asyncio asks it first for a lone
request without a body and writes its answer from the loop's read callback (``H1Shell._inline``);
the edge's warm cache hits answer so."""
