"""The object store's one exception root, and the one table that maps failures to S3's wire.

Every error the store raises derives from :class:`StoreError` and names, in ``s3_code``, the S3
error a client sees if it reaches the gateway (``log_level`` says whether the gateway logs it).
:func:`s3_error` is the only place where a failure becomes an S3 error: the store's own errors by
their ``s3_code``, the HTTP core's by :data:`HTTP_ERRORS`, anything else as InternalError, logged
with its traceback.

Roots of the store's error families, each a StoreError:

- :class:`~headwater.objstore.s3.errors.S3Error`: the S3 protocol's errors, already in wire form;
- :class:`~headwater.objstore.metadata.errors.MetadataError`: the metadata ring;
- :class:`~headwater.objstore.datapath.WriteFailed` / ``ReadFailed``: fragments to and from the
  storage nodes;
- :class:`~headwater.objstore.storage.fragment.FragmentError` (also an RPC error, so it crosses
  the wire between daemons typed) and ``StorageNodeError``: the storage node;
- :class:`~headwater.objstore.repair.reconstructor.RepairError`: the repair daemon;
- ``PlacementError``, ``StripeError``: the pure placement and stripe maths.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from headwater.http.errors import ClientDisconnected, ProtocolError, RequestTimeout
from headwater.http.types import BodyTooLarge

if TYPE_CHECKING:
    from .s3.errors import S3Error

__all__ = ["StoreError", "HTTP_ERRORS", "s3_error"]

log = logging.getLogger("headwater.objstore.gateway")


class StoreError(Exception):
    """Root of every error the object store raises.

    ``s3_code`` is the S3 error code a client is answered with when this reaches the gateway;
    ``log_level`` is how the gateway logs it then (None: not at all, the client was told), as
    the event ``log_event``.
    """

    s3_code: str = "InternalError"
    log_level: int | None = logging.ERROR
    log_event: str = "s3.store_error"


# The HTTP core's errors, which are not the store's: exception type -> S3 code (None: the client
# is gone and gets no answer). Checked in order, so subclasses come before their bases.
HTTP_ERRORS: tuple[tuple[type[BaseException], str | None], ...] = (
    (ClientDisconnected, None),
    (RequestTimeout, "RequestTimeout"),
    (BodyTooLarge, "MaxMessageLengthExceeded"),
    # A body that broke HTTP (bad chunk sizes, a connection cut mid-body): S3 answers a request
    # whose body is not what it declared with IncompleteBody.
    (ProtocolError, "IncompleteBody"),
)


def s3_error(exc: BaseException, operation: str = "") -> S3Error | None:
    """The S3 error ``exc`` is answered with; None when the client is gone."""
    from .s3 import errors as s3e

    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, s3e.S3Error):
        return exc
    if isinstance(exc, StoreError):
        if exc.log_level is not None:
            log.log(exc.log_level, "%s in %s: %s", type(exc).__name__, operation or "a request", exc,
                    extra={"event": exc.log_event, "operation": operation, "error": str(exc)})
        cls = s3e.ERRORS_BY_CODE.get(exc.s3_code, s3e.InternalError)
        # Server-side failures say what went wrong; a client's mistake gets S3's own message.
        return cls(f"{exc}") if cls.http_status >= 500 else cls()
    for kind, code in HTTP_ERRORS:
        if isinstance(exc, kind):
            return None if code is None else s3e.ERRORS_BY_CODE[code]()
    log.error("internal error in %s", operation or "a request", exc_info=exc,
              extra={"event": "s3.internal_error", "operation": operation})
    return s3e.InternalError()
