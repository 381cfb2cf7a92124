"""The shared model of the edge's cache: a stored response and its header fields.

Every part of the edge speaks this: the cache rules (``headwater.edge.cache``) decide on it, the
stores (``headwater.edge.store``) persist it (``to_record`` / ``from_record``: plain lists, as
msgpack wants them) and the daemon builds it from an upstream response (``stored_response``).

Header fields are ``(lower-case name, value)`` **str** pairs, latin-1 decoded as on the wire:
the kernel's HTTP core (``headwater.http.types``: ``Request.headers``, ``Response.headers``, h1
and h2) hands and takes exactly that, so a hit sends the stored fields as they are, with no
encode or decode per field per hit. (The first sketch of this interface said bytes; str is what
the core speaks.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

__all__ = [
    "Headers",
    "HeaderView",
    "CacheRequest",
    "StoredResponse",
    "HOP_BY_HOP",
    "stored_response",
    "header_values",
    "first_header",
    "end_to_end",
    "vary_names",
    "vary_key_of",
]

Headers = tuple[tuple[str, str], ...]
"""Header fields: ``(lower-case name, value)`` pairs in their received order; repeats allowed."""

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})
"""Never stored, never forwarded (RFC 9110 7.6.1), with the fields ``Connection`` names."""


class HeaderView(Protocol):
    """What the rules read from request headers: ``headwater.http.types.Headers`` is one."""

    def get(self, name: str, default: str | None = None) -> str | None: ...

    def get_all(self, name: str) -> list[str]: ...

    def __iter__(self) -> Iterator[tuple[str, str]]: ...


class CacheRequest(Protocol):
    """The request as the cache rules read it: ``headwater.http.types.Request`` is one.

    ``path`` and ``query`` are raw (still %-encoded); ``host`` is the authority the core saw.
    """

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def query(self) -> str: ...

    @property
    def headers(self) -> HeaderView: ...


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as a cache holds it (the body lives in the store, beside it).

    ``request_time`` and ``response_time`` are the RFC 9111 4.2.3 inputs: the cache's clock when
    it sent the request that produced this response and when the response arrived (seconds since
    the epoch, from the injected clock). ``vary_key`` holds, for each field the response's
    ``Vary`` names, the request's value (``""`` when absent), in ``Vary``'s order: the secondary
    key a later request must match.
    """

    status: int
    headers: Headers
    request_time: float
    response_time: float
    body_size: int
    vary_key: Headers = ()

    def get(self, name: str) -> str | None:
        """The first value of field ``name`` (lower case), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of field ``name`` (lower case), in order."""
        return [v for k, v in self.headers if k == name]

    def to_record(self) -> list:
        """Plain lists and scalars (msgpack-ready); ``from_record`` inverts it."""
        return [self.status, [list(f) for f in self.headers], self.request_time,
                self.response_time, self.body_size, [list(f) for f in self.vary_key]]

    @classmethod
    def from_record(cls, record: list) -> StoredResponse:
        """The StoredResponse that ``to_record`` produced ``record`` from."""
        status, headers, request_time, response_time, body_size, vary_key = record
        return cls(int(status), tuple((str(k), str(v)) for k, v in headers), float(request_time),
                   float(response_time), int(body_size), tuple((str(k), str(v)) for k, v in vary_key))


def header_values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Every value of ``name`` (lower case) in a header list."""
    return [v for k, v in headers if k == name]


def first_header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of ``name`` (lower case) in a header list, or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def end_to_end(headers: Iterable[tuple[str, str]]) -> Headers:
    """``headers`` without hop-by-hop fields, nor those that ``Connection`` names (RFC 9110 7.6.1).

    Names are lower-cased (an upstream client may hand them in any case).
    """
    items = [(k.lower(), v) for k, v in headers]
    named = set(HOP_BY_HOP)
    for k, v in items:
        if k == "connection":
            named.update(t.strip().lower() for t in v.split(",") if t.strip())
    return tuple((k, v) for k, v in items if k not in named)


def stored_response(request: CacheRequest, status: int, headers: Iterable[tuple[str, str]], *,
                    request_time: float, response_time: float, body_size: int) -> StoredResponse:
    """The StoredResponse to keep for ``request``'s upstream answer (hop-by-hop fields removed,
    the ``Vary`` secondary key taken from ``request``)."""
    kept = end_to_end(headers)
    return StoredResponse(status, kept, request_time, response_time, body_size,
                          vary_key_of(request, kept))


def vary_names(headers: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The field names every ``Vary`` value lists, lower case, in order, without repeats
    (``*`` included as ``"*"``)."""
    names: list[str] = []
    for v in header_values(headers, "vary"):
        for t in v.split(","):
            t = t.strip().lower()
            if t and t not in names:
                names.append(t)
    return tuple(names)


def vary_key_of(request: CacheRequest, response_headers: Iterable[tuple[str, str]]) -> Headers:
    """For each field ``Vary`` names, the request's combined value (RFC 9110 5.3: values joined
    with ``, ``; ``""`` when absent). ``Vary: *`` is kept as ``("*", "")``: it never matches."""
    out = []
    for name in vary_names(response_headers):
        if name == "*":
            out.append(("*", ""))
        else:
            out.append((name, ", ".join(request.headers.get_all(name))))
    return tuple(out)
