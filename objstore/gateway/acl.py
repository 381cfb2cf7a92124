"""Access control lists: ``?acl`` GET / PUT on a bucket or an object.

ACLs are not kept (``s3.acl``): every bucket and object is its owner's alone, and that is the ACL
a GET reports. A PUT that asks for that same ACL changes nothing and succeeds; any other is
refused, as S3 refuses it on a bucket whose ACLs are disabled. Owner only, like every bucket
operation (``owned_bucket``): another user is AccessDenied.
"""

from __future__ import annotations

from headwater.http.types import Response

from ..records import ObjectRecord, objects_ns
from ..s3 import acl
from ..s3 import errors as s3e
from .buckets import owned_bucket, xml_response
from .context import Call, Store
from .objects import sub_resource_target
from .payload import Payload

__all__ = ["get_bucket_acl", "put_bucket_acl", "get_object_acl", "put_object_acl"]


async def _object_owner(store: Store, call: Call) -> str:
    """The owner of the object a ``?acl`` request names, after the bucket's checks (as for
    ``?tagging``: ``objects.sub_resource_target``)."""
    bucket, key = await sub_resource_target(store, call)
    entry = await store.meta.get(objects_ns(bucket), key)
    if entry is None:
        raise s3e.NoSuchKey(Key=key)
    return ObjectRecord.from_value(entry.value).owner


async def _check_put(call: Call, owner: str) -> Response:
    body = await Payload(call, max_bytes=acl.MAX_DOCUMENT_BYTES).read_all()
    acl.check_put_acl(call.request.headers, body, owner_id=owner)
    return Response(status=200, headers=[("content-length", "0")])


async def get_bucket_acl(store: Store, call: Call) -> Response:
    rec = await owned_bucket(store, call)
    return xml_response(acl.access_control_policy(rec.owner, rec.owner))


async def put_bucket_acl(store: Store, call: Call) -> Response:
    rec = await owned_bucket(store, call)
    return await _check_put(call, rec.owner)


async def get_object_acl(store: Store, call: Call) -> Response:
    owner = await _object_owner(store, call)
    return xml_response(acl.access_control_policy(owner, owner))


async def put_object_acl(store: Store, call: Call) -> Response:
    owner = await _object_owner(store, call)
    return await _check_put(call, owner)
