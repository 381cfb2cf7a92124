"""msgpack RPC over TCP: framed, multiplexed by request id, with deadlines and typed errors.

Every connection is authenticated before any call is served: both ends prove knowledge of the
cluster secret (:mod:`headwater.rpc.auth`); servers and clients take it as ``secret=``, from
:func:`cluster_secret`.

Bulk bytes travel as the raw payload after each frame's msgpack header, never inside msgpack.
See :mod:`headwater.rpc.frame` for the wire format.
"""

from headwater.lazy import lazy_exports

# Imported on first use (headwater.lazy): the CLI needs only ``auth`` (the cluster secret), and
# the client and server pull in anyio, the framing and the pools.
_EXPORTS = {
    "ClusterSecret": ".auth", "cluster_secret": ".auth", "ensure_cluster_secret": ".auth",
    "PendingCall": ".client", "RpcClient": ".client",
    **{name: ".errors" for name in ("AuthFailed", "BadRequest", "DeadlineExceeded", "NoSuchMethod", "RemoteError",
                                    "RpcError", "Unavailable", "register_error")},
    "DEFAULT_MAX_FRAME_BYTES": ".frame", "FileRange": ".frame", "FrameError": ".frame",
    "ClientPool": ".pool",
    "AtOnceHandler": ".server", "Handler": ".server", "LATER": ".server", "Reply": ".server", "RpcServer": ".server",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
