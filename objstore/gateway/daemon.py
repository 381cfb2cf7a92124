"""The S3 gateway daemon: HTTP in, SigV4, routing to the operation handlers, S3 errors out.

Each worker process runs ``run_gateway``: it opens the metadata and storage clients, serves the
S3 API on the shared port (SO_REUSEPORT), and /healthz and /metrics on the admin port.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import secrets
import time
from typing import Any, Awaitable, Callable

import anyio

from headwater.admin import serve_admin
from headwater.budget import ByteBudget
from headwater.config import ClusterConfig
from headwater.http.server import serve
from headwater.localca import tls_context
from headwater.http.types import Request, Response
from headwater.metrics import Registry, add_process_metrics
from headwater.workermetrics import shared_metrics

from ..config import GatewayConfig, user_by_access_key
from ..datapath import StoragePool
from ..errors import s3_error
from ..metadata.client import MetadataClient
from ..s3 import errors as s3e
from ..s3 import auth, names
from ..s3 import acl, encryption, objectlock
from ..s3 import bucketconfig as s3_bucketconfig
from ..s3.storageclass import check_storage_class
from . import bucketconfig, buckets, multipart, objects, postobject, tagging
from . import acl as acl_handlers
from .bucketcache import BucketCache
from .context import Call, Store

__all__ = ["Gateway", "run_gateway"]

log = logging.getLogger(__name__)

Handler = Callable[[Store, Call], Awaitable[Response]]


#: Bucket sub-resources the gateway answers: ``?sub`` -> (S3 operation, handler), by method. A
#: query naming several is routed by the first in table order.
BUCKET_GET: dict[str, tuple[str, Handler]] = {
    "location": ("GetBucketLocation", buckets.get_location),
    "versioning": ("GetBucketVersioning", buckets.get_versioning),
    "versions": ("ListObjectVersions", buckets.list_versions),
    "uploads": ("ListMultipartUploads", multipart.list_uploads),
    "tagging": ("GetBucketTagging", tagging.get_bucket_tagging),
    "acl": ("GetBucketAcl", acl_handlers.get_bucket_acl),
    # Configurations no bucket has (s3/bucketconfig.py): S3's "not configured" answers.
    **{sub: (name, bucketconfig.getter(sub)) for sub, name in s3_bucketconfig.GET_OPERATIONS.items()},
}
BUCKET_PUT: dict[str, tuple[str, Handler]] = {
    "tagging": ("PutBucketTagging", tagging.put_bucket_tagging),
    "acl": ("PutBucketAcl", acl_handlers.put_bucket_acl),
}
BUCKET_DELETE: dict[str, tuple[str, Handler]] = {
    "tagging": ("DeleteBucketTagging", tagging.delete_bucket_tagging),
    **{sub: (name, bucketconfig.delete_config) for sub, name in s3_bucketconfig.DELETE_OPERATIONS.items()},
}
#: Sub-resources S3 has and the gateway does not: 501 NotImplemented (PUT of a configuration
#: above, and these on any method).
NOT_IMPLEMENTED_BUCKET = ("analytics", "metrics", "inventory", "intelligent-tiering")
NOT_IMPLEMENTED_OBJECT = ("attributes", "torrent", "retention", "legal-hold")


def _sub(table: dict[str, tuple[str, Handler]], q: dict[str, list[str]]) -> tuple[str, Handler] | None:
    for sub, found in table.items():
        if sub in q:
            return found
    return None


def route(method: str, bucket: str | None, key: str | None, query: dict[str, list[str]],
          headers: Any) -> tuple[str, Handler]:
    """Name the S3 operation a request asks for, and the handler that performs it."""
    q = query
    if bucket is None:
        if method == "GET":
            return "ListBuckets", buckets.list_buckets
        raise s3e.MethodNotAllowed(f"{method} is not allowed on the service")
    if key is None:
        if method == "GET":
            found = _sub(BUCKET_GET, q)
            if found is not None:
                return found
            for sub in NOT_IMPLEMENTED_BUCKET:
                if sub in q:
                    raise s3e.NotImplemented(f"the ?{sub} subresource is not implemented")
            if q.get("list-type", [""])[0] == "2":
                return "ListObjectsV2", buckets.list_objects_v2
            return "ListObjects", buckets.list_objects_v1
        if method == "PUT":
            found = _sub(BUCKET_PUT, q)
            if found is not None:
                return found
            if q:
                raise s3e.NotImplemented(f"bucket subresource ?{next(iter(q))} is not implemented")
            return "CreateBucket", buckets.create_bucket
        if method == "HEAD":
            return "HeadBucket", buckets.head_bucket
        if method == "DELETE":
            found = _sub(BUCKET_DELETE, q)
            if found is not None:
                return found
            if q:
                raise s3e.NotImplemented(f"bucket subresource ?{next(iter(q))} is not implemented")
            return "DeleteBucket", buckets.delete_bucket
        if method == "POST" and "delete" in q:
            return "DeleteObjects", objects.delete_objects
        raise s3e.MethodNotAllowed(f"{method} is not allowed on a bucket")
    upload = "uploadId" in q
    if method == "PUT":
        if upload and "partNumber" in q:
            if "x-amz-copy-source" in headers:
                return "UploadPartCopy", multipart.upload_part_copy
            return "UploadPart", multipart.upload_part
        if "tagging" in q:
            return "PutObjectTagging", tagging.put_object_tagging
        if "acl" in q:
            return "PutObjectAcl", acl_handlers.put_object_acl
        for sub in NOT_IMPLEMENTED_OBJECT:
            if sub in q:
                raise s3e.NotImplemented(f"the ?{sub} subresource is not implemented")
        if "x-amz-copy-source" in headers:
            return "CopyObject", objects.copy_object
        return "PutObject", objects.put_object
    if method == "GET":
        if upload:
            return "ListParts", multipart.list_parts
        if "tagging" in q:
            return "GetObjectTagging", tagging.get_object_tagging
        if "acl" in q:
            return "GetObjectAcl", acl_handlers.get_object_acl
        for sub in NOT_IMPLEMENTED_OBJECT:
            if sub in q:
                raise s3e.NotImplemented(f"the ?{sub} subresource is not implemented")
        return "GetObject", objects.get_object
    if method == "HEAD":
        return "HeadObject", objects.head_object
    if method == "DELETE":
        if upload:
            return "AbortMultipartUpload", multipart.abort_upload
        if "tagging" in q:
            return "DeleteObjectTagging", tagging.delete_object_tagging
        return "DeleteObject", objects.delete_object
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload", multipart.create_upload
        if upload:
            return "CompleteMultipartUpload", multipart.complete_upload
    raise s3e.MethodNotAllowed(f"{method} is not allowed on an object")


class Gateway:
    """The S3 HTTP app over one Store."""

    def __init__(self, store: Store, *, registry: Registry, base_domains: list[str] | None = None,
                 worker: int = 0):
        self.store = store
        self.base_domains = base_domains or ["localhost", "s3.localhost"]
        self.worker = worker
        self.registry = registry
        self.m_requests = registry.counter("headwater_s3_requests_total", "S3 requests by operation and status",
                                           labels=("operation", "status"))
        self.m_seconds = registry.histogram("headwater_s3_request_seconds", "S3 request latency",
                                            labels=("operation",))
        self.m_bytes_in = registry.counter("headwater_s3_bytes_in_total", "Request body bytes accepted")
        self.m_bytes_out = registry.counter("headwater_s3_bytes_out_total", "Object bytes served")

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = secrets.token_hex(8).upper()
        operation = "Unknown"
        resource = request.path
        try:
            host = request.host or request.headers.get("host", "")
            bucket, key, query = names.parse_target(host, request.path, request.query,
                                                    base_domains=self.base_domains)
            if bucket is not None:
                resource = f"/{bucket}" + (f"/{key}" if key is not None else "")
            if bucket is not None and postobject.is_post_form(request, key):
                # A browser upload: the form's signed policy is its authentication.
                operation = "PostObject"
                response = await postobject.post_object(self.store, request, bucket=bucket, request_id=request_id)
                return self._finish(response, operation, request_id, started)
            verified = auth.authenticate(
                method=request.method, raw_path=request.path, raw_query=request.query,
                headers=request.headers, lookup_user=functools.partial(user_by_access_key, self.store.cluster),
                region=self.store.cluster.objstore.region, now=self.store.clock(),
                max_skew_s=self.store.cluster.objstore.clock_skew_s, host=request.host or None,
                host_bucket=names.host_bucket(host, self.base_domains))
            # A presigned URL may carry signed header fields as parameters (SigV2: x-amz-*,
            # Content-Type; SigV4: the x-amz-* a presigner hoisted, x-amz-tagging, x-amz-meta-*):
            # they apply as the headers they stand for.
            for name, value in verified.query_headers:
                request.headers.add(name, value)
            operation, handler = route(request.method, bucket, key, query, request.headers)
            encryption.check_write(operation, request.headers)
            check_storage_class(operation, request.headers)
            acl.check_acl(operation, request.headers)
            objectlock.check_object_lock(operation, request.headers)
            call = Call(request=request, request_id=request_id, user=verified.auth.user, bucket=bucket,
                        key=key, query=query, auth=verified.auth)
            response = await handler(self.store, call)
            response.headers.extend(call.response_headers)
        except Exception as e:  # noqa: BLE001 — one bad request must not take the worker down
            err = s3_error(e, operation)
            if err is None:
                raise  # the client went away: there is no one to answer
            response = self._error(err, resource, request_id, request.method)
        return self._finish(response, operation, request_id, started)

    def _finish(self, response: Response, operation: str, request_id: str, started: float) -> Response:
        """Every answer's request ids, and its count and time in the metrics."""
        response.headers.append(("x-amz-request-id", request_id))
        response.headers.append(("x-amz-id-2", base64.b64encode(f"{self.worker}/{request_id}".encode()).decode()))
        self.m_requests.labels(operation, str(response.status)).inc()
        self.m_seconds.labels(operation).observe(time.perf_counter() - started)
        return response

    def _error(self, err: s3e.S3Error, resource: str, request_id: str, method: str) -> Response:
        status, headers, body = s3e.error_response(err, resource=resource, request_id=request_id,
                                                   head=method == "HEAD")
        return Response(status=status, headers=list(headers), body=body)


async def run_gateway(cluster: ClusterConfig, node: GatewayConfig, *, worker: int = 0,
                      task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """Run one gateway worker: S3 on ``node.port`` and admin on ``node.admin_port``."""
    registry = Registry()
    add_process_metrics(registry)  # as every daemon: the restart alert reads process_start_time_seconds
    metrics = shared_metrics(cluster, node, registry, worker)  # whichever worker answers, all workers' series
    async with MetadataClient(cluster, writer_id=f"{node.id}-w{worker}-{os.getpid()}") as meta, \
            StoragePool(cluster, read_budget=ByteBudget(node.read_buffer_bytes),
                        read_wait_s=node.read_buffer_wait_s, splice_reads=node.splice_reads) as pool:
        store = Store(cluster=cluster, meta=meta, pool=pool, clock=time.time,
                      retire_grace_s=cluster.objstore.retire_grace_s,
                      buckets=BucketCache(ttl_s=node.bucket_cache_s, clock_drift=cluster.objstore.raft_clock_drift))
        app = Gateway(store, registry=registry, worker=worker)
        # The config reader has checked that both files are given and readable (or both "auto":
        # the local CA's leaf).
        ssl_context = tls_context(cluster, node.tls_cert, node.tls_key)

        async def health() -> dict[str, Any]:
            meta_up = await meta.health()
            down = pool.down()
            ok = sum(meta_up.values()) * 2 > len(meta_up)
            return {"status": "ok" if ok else "degraded", "role": "gateway", "id": node.id, "pid": os.getpid(), "worker": worker,
                    "ec": cluster.objstore.ec.describe(), "metadata_up": meta_up,
                    "storage_down": sorted(down), "workers": node.workers,
                    "read_buffer": pool.read_budget.statistics() if pool.read_budget else None,
                    "read_timing": pool.read_timing.statistics(),
                    "bucket_cache": store.buckets.statistics()}

        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: serve(app, host=node.host, port=node.port, limits=node.limits,
                                                     ssl_context=ssl_context, reuse_port=True,
                                                     task_status=task_status))
            await tg.start(lambda task_status: serve_admin(host=node.host, port=node.admin_port, health=health,
                                                           registry=metrics, reuse_port=True,
                                                           task_status=task_status))
            tg.start_soon(metrics.run_forever)
            tg.start_soon(store.run_retirer)
            task_status.started()
