"""The ``licence`` daemon: the ClearKey licence server on the kernel's HTTP core.

:func:`run_licence` is the role's entry point. It opens the key store (LMDB, shared with the
CLI), loads the token keys (and starts the JWKS fetcher for an issuer's keys), and serves:

- licences on ``port``: HTTPS (ALPN h2, http/1.1) with the operator's files or, for ``"auto"``,
  the cluster's local CA's leaf; plain HTTP with ``tls = false``;
- titles' content keys to transcoders on ``rpc_port`` when it is set (``keys.title``, the
  kernel's RPC: callers prove the cluster secret; :mod:`..keys.service`);
- the admin endpoint on ``admin_port``: /healthz (keys stored, licences granted and refused,
  KEKs loaded) and /metrics.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import anyio

from headwater.admin import ADMIN_LIMITS, admin_app, export_stats
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import ClusterConfig
from headwater.http import serve
from headwater.localca import client_ssl_context, tls_context
from headwater.metrics import Registry, add_process_metrics

from ..config import LicenceConfig
from ..errors import DrmError
from ..keys.kek import Kek, create_kek_file, kek_from_env, read_kek_file
from ..keys.service import METHOD as KEYS_METHOD
from ..keys.service import BadKeyRequest, KeyService
from ..keys.store import KeyStore
from .app import LicenceApp
from .audit import AuditLog, KeyServed
from .entitlement import ReplayCache, TokenVerifier, VerificationKey
from .ratelimit import LicenceRateLimiter
from .tokenkeys import JwksSource, static_keys

__all__ = ["run_licence", "open_key_store", "base_kek_loader"]

log = logging.getLogger("headwater.drm.licence")


def base_kek_loader(node: LicenceConfig, *, create: bool = False) -> Any:
    """A function loading the configured KEK (``kek_env`` or ``kek_file``). With ``create``, a
    missing ``kek_file`` is made first (a fresh cluster: nothing is wrapped under any KEK yet)."""
    if node.kek_env is not None:
        name = node.kek_env
        return lambda: kek_from_env(name)
    path = node.kek_file
    assert path is not None

    def load() -> Kek:
        if create:
            create_kek_file(path)
        return read_kek_file(path)
    return load


#: The daemon keeps a content key unwrapped for at most this long after unwrapping it, and at
#: most this many at once (see KeyStore's unwrap cache: the record is still read per request).
UNWRAP_CACHE_S = 30.0
UNWRAP_CACHE_ENTRIES = 1024


def open_key_store(node: LicenceConfig, *, clock: Clock = SYSTEM_CLOCK, create_kek: bool = False,
                   unwrap_cache: bool = False) -> KeyStore:
    """The daemon's key store, as the daemon and the CLI open it (the CLI without the cache of
    unwrapped keys)."""
    store_exists = (node.key_store_dir / "data.mdb").exists()
    # A KEK file is made only for an empty store: with records in it, a missing KEK is an error
    # (a new one would read none of them).
    loader = base_kek_loader(node, create=create_kek and not store_exists)
    return KeyStore(node.key_store_dir, loader, map_size=node.key_store_bytes, clock=clock.time,
                    monotonic=clock.monotonic, unwrap_cache_entries=UNWRAP_CACHE_ENTRIES if unwrap_cache else 0,
                    unwrap_cache_s=UNWRAP_CACHE_S if unwrap_cache else 0.0)


async def run_licence(cluster: ClusterConfig, node: LicenceConfig, *, clock: Clock = SYSTEM_CLOCK,
                      task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the licence server until cancelled (the ``licence`` role's entry point)."""
    registry = Registry()
    add_process_metrics(registry)
    tls = tls_context(cluster, node.tls_cert, node.tls_key, clock=clock)
    store = open_key_store(node, clock=clock, create_kek=True, unwrap_cache=True)
    static = static_keys(cluster, node)
    jwks = [JwksSource(k.jwks_url, refresh_s=k.jwks_refresh_s, max_bytes=k.jwks_max_bytes, max_keys=k.jwks_max_keys,
                       monotonic=clock.monotonic, min_interval_s=k.jwks_min_refresh_s,
                       verify=client_ssl_context(cluster))
            for k in node.tokens.keys if k.jwks_url]

    def current_keys() -> list[VerificationKey]:
        if not jwks:
            return static
        return static + [k for source in jwks for k in source.keys]

    def unknown_kid(kid: str) -> None:
        for source in jwks:
            source.request_refresh(kid)

    t = node.tokens
    verifier = TokenVerifier(current_keys, clock=clock.time, leeway_s=t.leeway_s, max_lifetime_s=t.max_lifetime_s,
                             issuer=t.issuer, audience=t.audience, on_unknown_kid=unknown_kid)
    audit = AuditLog(node.audit_path)

    def on_error(exc: BaseException) -> None:
        log.error("licence: %s", exc, extra={"event": "licence.key_store_error"})

    app = LicenceApp(keys=store, verifier=verifier, policy=node.policy, limiter=LicenceRateLimiter(node.rate_limits),
                     replay=ReplayCache(t.replay_cache_entries, leeway_s=t.leeway_s), audit=audit,
                     allowed_origins=node.allowed_origins, cors_max_age_s=node.cors_max_age_s,
                     max_request_bytes=node.max_request_bytes, max_kids=node.max_kids, clock=clock,
                     on_error=on_error)
    export_stats(registry, "hw_licence", lambda: dict(app.counts))

    keys_rpc: Any = None
    if node.rpc_port is not None:
        from headwater.rpc import BadRequest, RemoteError, RpcServer, cluster_secret

        secret = cluster_secret(cluster)
        service = KeyService(store, secret.key, on_served=lambda title, scheme, kid: audit.record(
            KeyServed(time=clock.time(), title=title, scheme=scheme, kid=kid)))
        export_stats(registry, "hw_licence_rpc", lambda: dict(service.counts))
        keys_rpc = RpcServer(node.id, secret=secret, max_frame_bytes=64 * 1024)

        async def keys_title(args: dict, payload: bytes) -> dict[str, Any]:
            try:
                return service.answer(args)
            except BadKeyRequest as e:
                raise BadRequest(str(e)) from None
            except DrmError as e:
                log.error("licence: keys.title: %s", e, extra={"event": "licence.key_store_error"})
                raise RemoteError(str(e)) from None

        keys_rpc.add(KEYS_METHOD, keys_title)

    async def health() -> dict[str, Any]:
        return {"keys": store.count(), **app.counts, **(service.counts if keys_rpc is not None else {}), "keks": len(store.kek_ids()),
                "token_keys": len(current_keys()), "tls": tls is not None, "pid": os.getpid()}

    try:
        async with anyio.create_task_group() as tg:
            for source in jwks:
                tg.start_soon(source.run_forever)
            await tg.start(lambda task_status: serve(app, host=node.host, port=node.port, limits=node.limits,
                                                     ssl_context=tls, clock=clock, task_status=task_status))
            await tg.start(lambda task_status: serve(admin_app(health=health, registry=registry), host=node.host,
                                                     port=node.admin_port, limits=ADMIN_LIMITS, clock=clock,
                                                     task_status=task_status))
            if keys_rpc is not None:
                await tg.start(lambda task_status: keys_rpc.serve(node.host, node.rpc_port, task_status=task_status))
            log.info("licence: %s serving on %s://%s:%d", node.id, "https" if tls else "http", node.host, node.port,
                     extra={"event": "licence.started"})
            task_status.started()
    finally:
        audit.close()
        store.close()
