"""Typed RPC errors and their wire mapping.

Every error class carries its wire ``code``. A class registered with :func:`register_error`
crosses the wire by that code: a handler raises it on the server and the caller catches the same
class, with the same message and details. Anything else a handler raises arrives as
:class:`RemoteError`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack

__all__ = [
    "RpcError",
    "Unavailable",
    "DeadlineExceeded",
    "AuthFailed",
    "NoSuchMethod",
    "BadRequest",
    "RemoteError",
    "register_error",
    "error_class",
    "to_wire",
    "from_wire",
]


class RpcError(Exception):
    """Root of every RPC error. ``details`` is a msgpack-able dict that travels with it."""

    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str = "", **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message or self.code

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.details.items())
        return f"{type(self).__name__}({self.message!r}{extra})"

    def __reduce__(self):  # picklable despite the keyword-only details
        return (_rebuild, (type(self), self.message, self.details))


def _rebuild(cls: type[RpcError], message: str, details: dict) -> RpcError:
    return cls(message, **details)


class Unavailable(RpcError):
    """The peer cannot be reached, or the connection was lost with the call in flight."""

    code = "unavailable"
    retryable = True


class DeadlineExceeded(RpcError):
    """The call's deadline passed before a reply arrived."""

    code = "deadline"
    retryable = True


class AuthFailed(Unavailable):
    """The connection failed the cluster-secret handshake (:mod:`headwater.rpc.auth`), in either
    direction: the peer has another secret or cluster name, or is not a headwater node. Nothing
    was sent. It is an Unavailable so callers treat the peer as down; the message says why."""

    code = "auth_failed"


class NoSuchMethod(RpcError):
    code = "no_such_method"


class BadRequest(RpcError):
    code = "bad_request"


class RemoteError(RpcError):
    """The handler raised something that has no registered code."""

    code = "remote"


_REGISTRY: dict[str, type[RpcError]] = {}

E = TypeVar("E", bound=type[RpcError])


def register_error(cls: E) -> E:
    """Class decorator: make ``cls`` cross the wire by its ``code``."""
    if not (isinstance(cls, type) and issubclass(cls, RpcError)):
        raise TypeError(f"{cls!r} is not an RpcError subclass")
    code = cls.__dict__.get("code")
    if not isinstance(code, str) or not code:
        raise TypeError(f"{cls.__name__} must define its own class attribute `code`")
    other = _REGISTRY.get(code)
    if other is not None and other is not cls and (other.__module__, other.__qualname__) != (
            cls.__module__, cls.__qualname__):
        raise ValueError(f"error code {code!r} is already registered by {other.__qualname__}")
    _REGISTRY[code] = cls
    return cls


for _cls in (RpcError, Unavailable, DeadlineExceeded, AuthFailed, NoSuchMethod, BadRequest, RemoteError):
    register_error(_cls)


def error_class(code: str) -> type[RpcError] | None:
    return _REGISTRY.get(code)


def _packable(details: dict) -> dict:
    try:
        msgpack.packb(details, use_bin_type=True)
        return details
    except Exception:
        return {str(k): repr(v) for k, v in details.items()}


def to_wire(exc: BaseException) -> tuple[str, str, dict]:
    """(code, message, details) for an exception a handler raised."""
    if isinstance(exc, RpcError):
        code = exc.code
        if code in _REGISTRY:
            return code, exc.message, _packable(dict(exc.details))
        return RemoteError.code, f"{type(exc).__name__}: {exc.message}", _packable(
            {**exc.details, "remote_code": code})
    return RemoteError.code, f"{type(exc).__name__}: {exc}", {"type": type(exc).__name__}


def from_wire(code: str, message: str, details: Any) -> RpcError:
    """The exception to raise on the caller's side."""
    if not isinstance(details, dict):
        details = {}
    details = {str(k): v for k, v in details.items()}
    cls = _REGISTRY.get(code)
    if cls is None:
        cls, details = RemoteError, {**details, "remote_code": code}
    try:
        return cls(message, **details)
    except TypeError:  # a subclass with a stricter __init__
        err = cls.__new__(cls)
        RpcError.__init__(err, message, **details)
        return err
