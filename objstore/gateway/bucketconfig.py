"""Bucket configurations the store does not keep (``s3.bucketconfig``): GET answers S3's "not
configured" answer, DELETE 204 with nothing to delete. Owner only, as every bucket operation:
NoSuchBucket for a missing bucket, AccessDenied for another user's."""

from __future__ import annotations

import functools
from typing import Awaitable, Callable

from headwater.http.types import Response

from ..s3 import bucketconfig
from .buckets import owned_bucket, xml_response
from .context import Call, Store

__all__ = ["getter", "delete_config"]


async def _get_config(sub: str, store: Store, call: Call) -> Response:
    rec = await owned_bucket(store, call)
    return xml_response(bucketconfig.answer(sub, rec.name))


def getter(sub: str) -> Callable[[Store, Call], Awaitable[Response]]:
    """The handler of GET ``?sub`` (a key of ``bucketconfig.GET_OPERATIONS``)."""
    return functools.partial(_get_config, sub)


async def delete_config(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    return Response(status=204)
