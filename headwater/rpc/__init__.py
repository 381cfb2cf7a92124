"""msgpack RPC over TCP: framed, multiplexed by request id, with deadlines and typed errors.

Every connection is authenticated before any call is served: both ends prove knowledge of the
cluster secret (:mod:`headwater.rpc.auth`); servers and clients take it as ``secret=``, from
:func:`cluster_secret`.

Bulk bytes travel as the raw payload after each frame's msgpack header, never inside msgpack.
See :mod:`headwater.rpc.frame` for the wire format.
"""

from .auth import ClusterSecret, cluster_secret, ensure_cluster_secret
from .client import PendingCall, RpcClient
from .errors import (AuthFailed, BadRequest, DeadlineExceeded, NoSuchMethod, RemoteError, RpcError, Unavailable,
                     register_error)
from .frame import DEFAULT_MAX_FRAME_BYTES, FrameError
from .pool import ClientPool
from .server import Handler, Reply, RpcServer

__all__ = [
    "ClusterSecret",
    "cluster_secret",
    "ensure_cluster_secret",
    "AuthFailed",
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
