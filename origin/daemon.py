"""The ``origin`` daemon: a thin shell on the kernel's HTTP core.

:func:`run_origin` is the role's entry point. It opens (and migrates) the catalogue, whose
database also holds the upload records (shared by every origin host on it), empties the local
spool (a cache of the stored incomplete parts), ensures the uploads bucket, loads the built-in
issuer's key (or starts fetching the configured issuer's JWKS), and serves:

- the API on ``port`` (tus uploads, OAuth2, and the catalogue's JSON API, whose blocking
  database calls run in at most ``catalogue_threads`` worker threads): HTTPS (ALPN h2,
  http/1.1) with the operator's files or, for ``"auto"``, the cluster's local CA's leaf; plain
  HTTP with ``tls = false``;
- the admin endpoint on ``admin_port``: /healthz (uploads in progress and done, tokens issued)
  and /metrics;
- the web page for people (``/``, ``/title/T``, ``/upload``; :mod:`.web.site`) and the
  sign-in form of ``[[origin.users]]`` (``/oauth/authorize``);
- the CDN's origin (``/titles/T/vN/...`` from the videos bucket) and the playback API
  (``/api/titles/T/play``), reading the catalogue (``[origin.catalogue]``);
- a loop sending queued CDN purges (:mod:`.delivery.invalidation`) to the edge;
- a loop reading the job queue's depth and age for /metrics (:mod:`.queuegauges`);
- a loop aborting expired uploads, retiring the records of long-completed ones, and completing
  whole ones the store refused to complete (every minute, or a tenth of the expiry if shorter).
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

import anyio

from headwater.admin import ADMIN_LIMITS, admin_app, export_stats
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import ClusterConfig
from headwater.http import serve
from headwater.http.client import ClientSettings, HttpClient
from headwater.drm import client as drm_client
from headwater.edge import client as edge_client
from headwater.localca import client_ssl_context, tls_context
from headwater.metrics import Registry, add_process_metrics

from .api import CatalogueRunner, SearchApi, TitlesApi
from .app import OriginApp
from .catalogue import open_catalogue
from .api.titles import TRANSCODE_KIND
from .delivery import PURGE_JOB, ObjectServer, PlaybackService, PublishedVersions, PurgeWorker
from .delivery.lastknown import SAVE_EVERY_S, LastKnownPublications
from .auth.issuer import ClientRegistry, Issuer, load_signing_key, users_from_config
from .auth.login import UserDirectory
from .auth.jwks import JwksSource
from .auth.tokens import AccessKey, AccessTokenVerifier
from .config import UPLOAD_STORE_TIMEOUT_S, OriginConfig
from .errors import StoreUnavailable
from .queuegauges import JobQueueGauges
from .upload.janitor import UploadJanitor
from .upload.legacy import import_lmdb_records
from .upload.records import UploadRecords
from .upload.s3 import MultipartStore
from .upload.service import UploadService
from .web.site import WebSite, page_csp

__all__ = ["run_origin", "store_settings"]

log = logging.getLogger("headwater.origin")

#: How long /healthz waits for its read of the catalogue's database before it says "degraded".
HEALTH_DATABASE_WAIT_S = 1.0


def store_settings(cluster: ClusterConfig, node: OriginConfig) -> tuple[str, str, str, str]:
    """(endpoint URL, access key, secret key, region) of the object store uploads go to: the
    node's own, else this cluster's [gateway] and first [[users]] entry."""
    endpoint, access, secret = node.s3_endpoint, node.access_key, node.secret_key
    if not endpoint:
        gateway = getattr(cluster, "gateway", None)
        if gateway is None:
            raise ValueError("origin: no s3_endpoint and no [gateway] in cluster.toml")
        endpoint = f"{'https' if getattr(gateway, 'tls_cert', None) else 'http'}://{gateway.host}:{gateway.port}"
    if not access:
        users = tuple(getattr(cluster, "users", ()) or ())
        if not users:
            raise ValueError("origin: no access_key/secret_key and no [[users]] in cluster.toml")
        access, secret = users[0].access_key, users[0].secret_key
    region = node.region
    if not region:
        try:
            region = cluster.objstore.region
        except AttributeError:
            region = "us-east-1"
    return endpoint, access, secret, region


async def run_origin(cluster: ClusterConfig, node: OriginConfig, *, clock: Clock = SYSTEM_CLOCK,
                     task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the origin until cancelled (the ``origin`` role's entry point)."""
    registry = Registry()
    add_process_metrics(registry)
    tls = tls_context(cluster, node.tls_cert, node.tls_key, clock=clock)
    trust = client_ssl_context(cluster)
    client = HttpClient(ClientSettings(read_timeout_s=30.0, connect_timeout_s=5.0),
                        ssl_context=trust if isinstance(trust, ssl.SSLContext) else None, clock=clock)
    endpoint, access, secret, region = store_settings(cluster, node)
    try:
        min_part = cluster.objstore.min_part_bytes
    except AttributeError:
        min_part = 0
    if node.part_size < min_part:
        raise ValueError(f"origin: part_size {node.part_size} is below the store's min_part_size {min_part}")
    store = MultipartStore(client, endpoint=endpoint, bucket=node.uploads_bucket, access_key=access,
                           secret_key=secret, region=region, clock=clock, timeout_s=UPLOAD_STORE_TIMEOUT_S)
    catalogue_config = node.catalogue_config
    # Opening migrates the schema (and waits on another host's migration): off the event loop.
    # A PostgreSQL server that is down does not stop the origin: the catalogue is made all the
    # same and migrated when the database first answers (catalogue/schemagate.py).
    catalogue = await anyio.to_thread.run_sync(lambda: open_catalogue(catalogue_config, clock=clock))
    # PostgreSQL: no more threads than pooled connections (a thread would only wait for one);
    # the catalogue's calls and the upload records' each have that many.
    threads = node.catalogue_threads if catalogue_config.backend == "sqlite" \
        else min(node.catalogue_threads, catalogue_config.pool_size)
    # The upload records live in the catalogue's database: every origin host on it shares them.
    records = UploadRecords(catalogue, clock=clock, lease_s=node.upload_lease_s)

    async def source_in_use(owner: str, upload_id: str) -> bool:
        return await runner.call(lambda cat: cat.uses_upload(owner, upload_id))  # runner: made below

    uploads = UploadService(records=records, store=store, spool_dir=node.spool_dir, part_size=node.part_size,
                            max_upload_bytes=node.max_upload_bytes,
                            max_uploads_per_client=node.max_uploads_per_client, expiry_s=node.upload_expiry_s,
                            max_metadata_bytes=node.max_metadata_bytes,
                            max_parts_in_flight=node.max_parts_in_flight,
                            max_unverified_spool_bytes=node.max_unverified_spool_bytes,
                            min_spool_free_bytes=node.min_spool_free_bytes, retention_s=node.upload_retention_s,
                            clock=clock, source_in_use=source_in_use, host_id=node.id,
                            max_incomplete_segments=node.max_incomplete_segments,
                            orphan_grace_s=node.upload_orphan_grace_s, db_threads=threads)

    issuer: Issuer | None = None
    jwks: JwksSource | None = None
    users: UserDirectory | None = None
    if node.oauth.builtin:
        # One key, one secret per client and user for every origin host (auth/shared.py); reading
        # them from the database blocks: off the event loop.
        users = await anyio.to_thread.run_sync(lambda: users_from_config(cluster, node, db=catalogue))
        key = await anyio.to_thread.run_sync(lambda: load_signing_key(cluster, node, db=catalogue))
        clients = await anyio.to_thread.run_sync(lambda: ClientRegistry.from_config(cluster, node, db=catalogue))
        issuer = Issuer(key=key, issuer=node.issuer, audience=node.oauth.audience,
                        lifetime_s=node.oauth.token_lifetime_s, clients=clients)
        builtin_keys = [issuer.access_key]

        def keys() -> list[AccessKey]:
            return builtin_keys
    else:
        assert node.oauth.jwks_url is not None
        jwks = JwksSource(node.oauth.jwks_url, client=client, refresh_s=node.oauth.jwks_refresh_s,
                          min_interval_s=node.oauth.jwks_min_refresh_s,
                          max_bytes=node.oauth.jwks_max_bytes, max_keys=node.oauth.jwks_max_keys,
                          monotonic=clock.monotonic)

        def keys() -> list[AccessKey]:
            return jwks.keys if jwks is not None else []
    verifier = AccessTokenVerifier(keys, issuer=node.issuer, audience=node.oauth.audience, clock=clock.time,
                                   leeway_s=node.oauth.leeway_s,
                                   on_unknown_kid=jwks.request_refresh if jwks is not None else None)
    # PostgreSQL: open the local search index now (or start its rebuild), not at the first search.
    await anyio.to_thread.run_sync(catalogue.warm_search)
    runner = CatalogueRunner(catalogue, threads=threads)
    delivery = node.delivery
    videos = MultipartStore(client, endpoint=endpoint, bucket=node.videos_bucket, access_key=access,
                            secret_key=secret, region=region, clock=clock, timeout_s=delivery.store_timeout_s)

    async def read_title(title_id: int) -> Any:
        return await anyio.to_thread.run_sync(catalogue.get_title, title_id)

    # The published verdicts the catalogue last gave, kept across restarts: titles play on while
    # its database is away (delivery/lastknown.py).
    last_known = LastKnownPublications(Path(node.data_dir) / "published-versions.json",
                                       stale_max_s=delivery.publish_stale_max_s,
                                       max_entries=delivery.publish_cache_entries, clock=clock)
    await anyio.to_thread.run_sync(last_known.load)
    versions = PublishedVersions(read_title, ttl_s=delivery.publish_cache_s, max_entries=delivery.publish_cache_entries,
                                 clock=clock, last_known=last_known, breaker=catalogue.database_breaker)

    async def keep_publications() -> None:
        while True:
            await anyio.sleep(SAVE_EVERY_S)
            await anyio.to_thread.run_sync(last_known.write, last_known.snapshot())
    objects = ObjectServer(store=videos, versions=versions, config=delivery)
    playback = _playback(cluster, node, versions, clock)
    purger = edge_client.EdgePurger.from_cluster(cluster, client=client, distribution=delivery.distribution,
                                                 timeout_s=delivery.purge_timeout_s)
    purges = PurgeWorker(catalogue, purger.purge if purger is not None else None, versions=versions,
                         worker=f"{node.id}:{os.getpid()}", clock=clock)
    search = SearchApi(catalogue=runner)
    routes = [*TitlesApi(catalogue=runner, uploads=uploads, verifier=verifier,
                         uploads_bucket=node.uploads_bucket, media_base_url=playback.cdn_base_url).routes(),
              *search.routes()]
    web = WebSite(csp=page_csp(cdn_url=playback.cdn_base_url, licence_url=playback.licence_url))
    if web.missing:
        log.warning("origin: the web page's libraries are not installed (run `make setup`): %s",
                    ", ".join(web.missing), extra={"event": "origin.web_libraries_missing"})
    app = OriginApp(verifier=verifier, uploads=uploads, issuer=issuer, allowed_origins=node.allowed_origins,
                    cors_max_age_s=node.cors_max_age_s, rate_limits=node.rate_limits, clock=clock, routes=routes,
                    objects=objects, playback=playback, registry=registry, web=web, users=users)
    queue = JobQueueGauges(catalogue.ready_jobs, registry, kinds=(TRANSCODE_KIND, PURGE_JOB), clock=clock)

    def counts() -> dict[str, Any]:
        return {**uploads.counts, **app.counts, **runner.statistics(), **search.statistics(), **objects.counts,
                **versions.counts, **playback.counts, **purges.counts,
                "catalogue_available": int(catalogue.database_available)}
    export_stats(registry, "hw_origin", counts)

    async def health() -> dict[str, Any]:
        report = {**counts(), "catalogue": catalogue_config.backend, "tls": tls is not None, "issuer": node.issuer,
                  "builtin_issuer": issuer is not None, "pid": os.getpid()}
        stored = None
        try:
            # A database read: off the loop, and not waited for past HEALTH_DATABASE_WAIT_S (a
            # pool waiting for a connection to a dead server would hold the probe for its
            # connect_timeout_seconds, longer than a load balancer's probe waits).
            with anyio.move_on_after(HEALTH_DATABASE_WAIT_S):
                stored = await anyio.to_thread.run_sync(records.count, abandon_on_cancel=True)
            error = None if stored is not None else f"no answer within {HEALTH_DATABASE_WAIT_S:g} s"
        except StoreUnavailable as e:
            error = str(e)
        if error is not None:
            # Degraded, not dead: published titles (while cached), the local search index and
            # clean 503s are still served; what needs the database answers 503 until it is back.
            return {**report, "status": "degraded", "catalogue_database": "unavailable", "error": error}
        return {**report, "uploads": stored, "catalogue_database": "available"}

    janitor = UploadJanitor(uploads, interval_s=min(60.0, node.upload_expiry_s / 10), clock=clock)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.run)
            if jwks is not None:
                tg.start_soon(jwks.run_forever)
            try:
                await store.ensure_bucket()
            except StoreUnavailable as e:
                log.warning("origin: the object store is not ready: %s", e, extra={"event": "origin.store_down"})
            try:
                # Once, after an upgrade: the records of the LMDB days, their spooled bytes
                # stored as segments before the spool is emptied (upload/legacy.py).
                await import_lmdb_records(node.state_dir, node.spool_dir, records, store)
            except StoreUnavailable as e:
                raise RuntimeError(f"origin: the upload records in {node.state_dir} (the previous version's) "
                                   f"need the object store to be brought over; start again once it is up: "
                                   f"{e}") from None
            try:
                pending = await uploads.recover()
                await uploads.finish_pending(pending)
            except StoreUnavailable as e:
                # Serve anyway: each upload request reports the store's (or the records'
                # database's) state as 503; the janitor's passes complete whole uploads later.
                log.warning("origin: the object store or the catalogue database is not ready: %s", e,
                            extra={"event": "origin.store_down"})
            await tg.start(lambda task_status: serve(app, host=node.host, port=node.port, limits=node.limits,
                                                     ssl_context=tls, clock=clock, task_status=task_status))
            await tg.start(lambda task_status: serve(admin_app(health=health, registry=registry), host=node.host,
                                                     port=node.admin_port, limits=ADMIN_LIMITS, clock=clock,
                                                     task_status=task_status))
            tg.start_soon(janitor.run_forever)
            tg.start_soon(purges.run_forever)
            tg.start_soon(queue.run_forever)
            tg.start_soon(keep_publications)
            log.info("origin: %s serving on %s", node.id, node.base_url, extra={"event": "origin.started"})
            task_status.started()
    finally:
        try:
            last_known.write(last_known.snapshot(force=bool(len(last_known))))
        except OSError as e:
            log.warning("origin: could not keep the published versions: %s", e,
                        extra={"event": "origin.published_versions_unsaved"})
        records.close()
        catalogue.close()
        await client.aclose()


def _playback(cluster: ClusterConfig, node: OriginConfig, versions: PublishedVersions, clock: Clock) -> PlaybackService:
    """The playback API as cluster.toml makes it: the CDN's URL and signing key, the licence
    server's URL and token key (a missing licence key is logged and /play answers 503; a named
    CDN key that is absent is a configuration error)."""
    delivery = node.delivery
    cdn_base = delivery.cdn_base_url or edge_client.default_cdn_base_url(cluster) or node.base_url
    key = edge_client.find_signing_key(cluster, delivery.signing_key_id)
    cdn = getattr(cluster, "cdn", None)
    signing_required = bool(cdn is not None and cdn.keys.keys)
    grant = None
    if key is not None:
        def grant(resource: str, expires: int) -> edge_client.SignedGrant:
            return edge_client.signed_grant(resource, key, expires=expires)
    mint = None
    try:
        mint = drm_client.EntitlementMinter(cluster, key_id=delivery.licence_key_id).mint
    except Exception as e:  # noqa: BLE001 - no [licence], or its key cannot sign here: /play says so
        log.warning("origin: playback cannot mint licence tokens: %s", e, extra={"event": "origin.no_licence_key"})
    return PlaybackService(versions=versions, config=delivery, cdn_base_url=cdn_base,
                           licence_url=delivery.licence_url or drm_client.licence_url(cluster), grant=grant,
                           mint=mint, signing_required=signing_required, clock=clock)
