"""msgpack RPC over TCP: framed, multiplexed by request id, with deadlines and typed errors.

Bulk bytes travel as the raw payload after each frame's msgpack header, never inside msgpack.
See :mod:`headwater.rpc.frame` for the wire format.
"""

from .client import PendingCall, RpcClient
from .errors import (BadRequest, DeadlineExceeded, NoSuchMethod, RemoteError, RpcError, Unavailable,
                     register_error)
from .frame import DEFAULT_MAX_FRAME_BYTES, FrameError
from .pool import ClientPool
from .server import Handler, Reply, RpcServer

__all__ = [
    "PendingCall",
    "RpcError",
    "Unavailable",
    "DeadlineExceeded",
    "NoSuchMethod",
    "BadRequest",
    "RemoteError",
    "register_error",
    "Reply",
    "Handler",
    "RpcServer",
    "RpcClient",
    "ClientPool",
    "FrameError",
    "DEFAULT_MAX_FRAME_BYTES",
]
