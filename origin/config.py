"""The origin's part of cluster.toml: the ``[origin]`` daemon.

Read once through the kernel's :class:`~headwater.config.Reader` (errors name the key and its
line) into frozen dataclasses; every origin default lives here. Keys of ``[origin]``::

    id, host, port, admin_port, data_dir      ("origin", 127.0.0.1, 8090, 9090, data_dir/origin)
    tls_cert, tls_key                         ("auto" by default: the local CA's leaf; or tls = false)
    s3_endpoint, access_key, secret_key, region
                                              (default: this cluster's [gateway], its first
                                               [[users]] entry, [objstore].region)
    uploads_bucket                            ("uploads": objects land at uploads/<upload id>)
    videos_bucket                             ("videos": published titles, titles/T/vN/...)
    part_size                                 ("5MiB": the multipart part size, >= the store's minimum)
    max_upload_size                           ("20GiB": Tus-Max-Size)
    max_uploads_per_client                    (16: unfinished uploads per OAuth2 client at once)
    max_parts_in_flight                       (8: parts being sent at once: memory is this x part_size)
    upload_expiry_seconds                     (86400: an unfinished upload is aborted after this)
    max_metadata_size                         ("4KiB": the Upload-Metadata header)
    state_map_size                            (accepted and unused: upload records are in the
                                               catalogue's database since several hosts share them;
                                               the old LMDB ones are brought over once at start)
    upload_lease_seconds                      (30: a PATCH's lease on its upload lapses this long
                                               after its last renewal, e.g. its host died)
    max_incomplete_segments                   (8: objects the bytes past the last part may be
                                               stored as before a PATCH writes them as one)
    max_unverified_spool                      ("2GiB": bytes of checksummed PATCHes held on disk
                                               until verified, the whole process; over it 503)
    min_spool_free                            ("1GiB": free space the spool's disk keeps; under it 507)
    upload_retention_seconds                  (604800: a completed upload's record is removed
                                               this long after completion, with its object
                                               if no title was made from it)
    upload_orphan_grace_seconds               (3600: an object of the uploads bucket no upload
                                               record names (a segment left by a crash, a stray
                                               multipart upload) is removed once this old; more
                                               than upload_lease_seconds + a store request's 30 s)
    allowed_origins, cors_max_age_seconds     (CORS for browser tus clients: [] = any origin; 600)
    [origin.oauth]    issuer, audience, jwks_url, jwks_refresh_seconds, jwks_min_refresh_seconds,
                      jwks_max_size, jwks_max_keys, leeway_seconds, token_lifetime_seconds
    [[origin.clients]] id, scopes, and secret = "sealed" or secret_sha256 = "<hex>"
    [[origin.users]]   name, scopes, and password = "sealed" or password_scrypt = "scrypt$..."
                      (people who sign in on the web page: the authorization-code grant with PKCE)
    [origin.limits]   the HTTP core's limits (as [gateway.limits]; a key left out keeps
                      ORIGIN_HTTP_LIMITS's value)
    [origin.rate_limits]  token requests per address, tus writes per client
                      (headwater.origin.auth.ratelimit)
    [origin.catalogue] the catalogue's database and search bounds (origin/catalogue/config.py;
                      SQLite at data_dir/catalogue.sqlite3 by default)
    catalogue_threads (8: catalogue calls running at once in worker threads, off the event loop)
    videos_bucket     ("videos": published titles, titles/T/v<job>-<attempt>/...)
    [origin.delivery]  the CDN's origin and the playback API (:mod:`.delivery.config`)
    [[origin.hosts]]  several origin processes on one catalogue: each entry's id, host, port,
                      admin_port, data_dir (default data_dir/<id>) override the [origin] table's
                      (every other key is the table's); each is a daemon of its own
                      (``headwater node <id>``, ``headwater up`` starts them all). Two or more
                      need [origin.catalogue] backend = "postgresql" (the upload records and the
                      issuer's secrets are shared there); their tokens' iss is the [origin]
                      table's URL (its host and port: the name clients know the cluster by)
                      unless [origin.oauth] issuer says otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from headwater.config import TLS_AUTO, GiB, HttpLimits, KiB, MiB, Reader, read_http_limits

from .auth.ratelimit import RateLimits, read_rate_limits
from .catalogue.config import CatalogueConfig, read_catalogue
from .delivery.config import DeliveryConfig, read_delivery

#: Each request of the upload service to the object store waits at most this long.
UPLOAD_STORE_TIMEOUT_S = 30.0

__all__ = ["ClientConfig", "UserConfig", "OAuthConfig", "OriginConfig", "read_origin", "ORIGIN_HTTP_LIMITS", "SCOPES",
           "MIN_PART_SIZE"]

# Every scope a route of the origin asks for (the catalogue and playback routes use the last
# three). A client's scopes in cluster.toml must be among them.
SCOPES = ("upload", "titles:read", "titles:write", "view")
MIN_PART_SIZE = 64 * KiB

# A PATCH body is as large as the upload: the body bound is max_upload_size (set by the reader);
# a body slower than min_body_rate over a window is cut off by the HTTP core (a trickling client
# cannot hold a connection and a part buffer).
ORIGIN_HTTP_LIMITS = HttpLimits(max_header_bytes=32 * KiB, max_body_bytes=20 * GiB, header_timeout_s=10.0,
                                idle_timeout_s=75.0, body_timeout_s=60.0, max_connections=10_000,
                                min_body_rate_bytes_per_s=16 * KiB, min_body_rate_window_s=10.0)

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """One ``[[origin.clients]]`` entry: an OAuth2 client of the built-in issuer."""

    id: str
    scopes: tuple[str, ...]
    # "sealed": a random secret made on first use, sealed under the cluster secret in the
    # origin's data_dir (``headwater token --client ID --print-secret`` shows it); or the
    # SHA-256 of a secret the operator made (at least 32 random characters: a fast hash is safe
    # only for high-entropy secrets).
    sealed: bool = False
    secret_sha256: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UserConfig:
    """One ``[[origin.users]]`` entry: a person who signs in on the origin's web page."""

    name: str
    scopes: tuple[str, ...]
    # "sealed": a random password made on first use, sealed under the cluster secret in the
    # origin's data_dir (``headwater password --user NAME`` shows it); or an scrypt hash of the
    # person's own (``headwater password --hash`` makes one).
    sealed: bool = False
    password_scrypt: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthConfig:
    """``[origin.oauth]``: which issuer's tokens are accepted, and the built-in issuer's own."""

    issuer: str | None = None  # None: the built-in issuer, https://host:port
    audience: str = "headwater-origin"
    jwks_url: str | None = None  # set: an external issuer; the built-in one is off
    jwks_refresh_s: float = 300.0
    # A token naming a key the JWKS lacks (a rotation) fetches it again, at most this often.
    jwks_min_refresh_s: float = 30.0
    jwks_max_bytes: int = 64 * KiB
    jwks_max_keys: int = 16
    leeway_s: float = 30.0
    token_lifetime_s: float = 3600.0

    @property
    def builtin(self) -> bool:
        return self.jwks_url is None


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginConfig:
    """The ``origin`` daemon."""

    id: str = "origin"
    host: str = "127.0.0.1"
    port: int = 8090
    admin_port: int = 9090
    tls_cert: str | None = TLS_AUTO
    tls_key: str | None = TLS_AUTO
    data_dir: Path = Path("var/origin")
    s3_endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    region: str = ""
    uploads_bucket: str = "uploads"
    part_size: int = 5 * MiB
    max_upload_bytes: int = 20 * GiB
    max_uploads_per_client: int = 16
    max_parts_in_flight: int = 8
    upload_expiry_s: float = 86400.0
    max_metadata_bytes: int = 4 * KiB
    state_map_bytes: int = 64 * MiB
    upload_lease_s: float = 30.0
    max_incomplete_segments: int = 8
    max_unverified_spool_bytes: int = 2 * GiB
    min_spool_free_bytes: int = 1 * GiB
    upload_retention_s: float = 7 * 86400.0
    upload_orphan_grace_s: float = 3600.0
    allowed_origins: tuple[str, ...] = ()
    cors_max_age_s: int = 600
    oauth: OAuthConfig = OAuthConfig()
    clients: tuple[ClientConfig, ...] = ()
    users: tuple[UserConfig, ...] = ()
    limits: HttpLimits = ORIGIN_HTTP_LIMITS
    videos_bucket: str = "videos"
    delivery: DeliveryConfig = DeliveryConfig()
    # None: SQLite at data_dir/catalogue.sqlite3 (read_origin always sets it; see catalogue_config).
    catalogue: CatalogueConfig | None = None
    catalogue_threads: int = 8
    # [[origin.hosts]]: the origin processes this table stands for (empty: itself alone).
    hosts: tuple["OriginConfig", ...] = ()

    @property
    def catalogue_config(self) -> CatalogueConfig:
        """The catalogue this origin opens (the embedded default when none was read)."""
        if self.catalogue is not None:
            return self.catalogue
        return CatalogueConfig(backend="sqlite", path=self.data_dir / "catalogue.sqlite3")
    rate_limits: RateLimits = RateLimits()

    @property
    def role(self) -> str:
        return "origin"

    @property
    def needs_cluster_secret(self) -> bool:
        """TLS "auto" (the local CA's key is sealed), the built-in issuer's sealed signing key,
        sealed client secrets."""
        return self.tls_cert == TLS_AUTO or self.oauth.builtin or any(c.sealed for c in self.clients) \
            or any(u.sealed for u in self.users)

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://{self.host}:{self.port}"

    @property
    def issuer(self) -> str:
        """The ``iss`` tokens must carry."""
        return self.oauth.issuer or self.base_url

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"


_KEYS = {"id", "host", "port", "admin_port", "tls", "tls_cert", "tls_key", "data_dir", "s3_endpoint", "access_key",
         "secret_key", "region", "uploads_bucket", "part_size", "max_upload_size", "max_uploads_per_client",
         "max_parts_in_flight", "upload_expiry_seconds", "max_metadata_size", "state_map_size", "allowed_origins",
         "max_unverified_spool", "min_spool_free", "upload_retention_seconds", "upload_orphan_grace_seconds",
         "cors_max_age_seconds", "oauth", "upload_lease_seconds", "max_incomplete_segments", "clients", "limits",
         "catalogue", "catalogue_threads",
         "videos_bucket", "delivery", "rate_limits", "users", "hosts"}
_HOST_KEYS = {"id", "host", "port", "admin_port", "data_dir"}
_OAUTH_KEYS = {"issuer", "audience", "jwks_url", "jwks_refresh_seconds", "jwks_min_refresh_seconds", "jwks_max_size", "jwks_max_keys",
               "leeway_seconds", "token_lifetime_seconds"}
_CLIENT_KEYS = {"id", "scopes", "secret", "secret_sha256"}
_USER_KEYS = {"name", "scopes", "password", "password_scrypt"}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _url(r: Reader, data: Mapping[str, Any], key: str, p: str) -> str | None:
    url = r.get(data, key, p, str, None)
    if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
        raise r.error(f"{p}.{key}", f"{url!r} is not an http:// or https:// URL")
    return url


def _read_oauth(r: Reader, data: Mapping[str, Any], p: str) -> OAuthConfig:
    r.check_keys(data, p, _OAUTH_KEYS)
    jwks_url = _url(r, data, "jwks_url", p)
    issuer = _url(r, data, "issuer", p)
    if jwks_url is not None and issuer is None:
        raise r.error(f"{p}.issuer", "an external issuer's jwks_url needs its issuer (the tokens' iss)")
    audience = r.get(data, "audience", p, str, "headwater-origin")
    if not audience:
        raise r.error(f"{p}.audience", "must not be empty (RFC 9068: tokens name their resource server)")
    return OAuthConfig(issuer=issuer, audience=audience, jwks_url=jwks_url,
                       jwks_refresh_s=r.positive(data, "jwks_refresh_seconds", p, 300.0),
                       jwks_min_refresh_s=r.positive(data, "jwks_min_refresh_seconds", p, 30.0),
                       jwks_max_bytes=r.size(data, "jwks_max_size", p, 64 * KiB),
                       jwks_max_keys=r.get(data, "jwks_max_keys", p, int, 16),
                       leeway_s=r.non_negative(data, "leeway_seconds", p, 30.0),
                       token_lifetime_s=r.positive(data, "token_lifetime_seconds", p, 3600.0))


def _read_client(r: Reader, item: Mapping[str, Any], p: str) -> ClientConfig:
    r.check_keys(item, p, _CLIENT_KEYS)
    client_id = r.get(item, "id", p, str, required=True)
    if not _CLIENT_ID.match(client_id):
        raise r.error(f"{p}.id", f"{client_id!r}: 1..64 letters, digits, . _ -")
    scopes = r.get(item, "scopes", p, list, required=True)
    for s in scopes:
        if s not in SCOPES:
            raise r.error(f"{p}.scopes", f"{s!r} is not a scope of the origin ({', '.join(SCOPES)})")
    has = [k for k in ("secret", "secret_sha256") if k in item]
    if len(has) != 1:
        raise r.error(f"{p}.secret", 'give exactly one of secret = "sealed" and secret_sha256')
    digest = None
    if "secret" in item and item["secret"] != "sealed":
        raise r.error(f"{p}.secret", 'the only inline value is "sealed" (made and sealed under the cluster '
                                     "secret); for your own secret give its SHA-256 as secret_sha256")
    if "secret_sha256" in item:
        raw = r.get(item, "secret_sha256", p, str)
        try:
            digest = bytes.fromhex(raw)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise r.error(f"{p}.secret_sha256", "64 hex digits (sha256sum of the secret)")
    return ClientConfig(id=client_id, scopes=tuple(dict.fromkeys(scopes)), sealed="secret" in item,
                        secret_sha256=digest)


def _read_user(r: Reader, item: Mapping[str, Any], p: str) -> UserConfig:
    from .auth.login import check_scrypt

    r.check_keys(item, p, _USER_KEYS)
    name = r.get(item, "name", p, str, required=True)
    if not _CLIENT_ID.match(name):
        raise r.error(f"{p}.name", f"{name!r}: 1..64 letters, digits, . _ -")
    scopes = r.get(item, "scopes", p, list, required=True)
    for s in scopes:
        if s not in SCOPES:
            raise r.error(f"{p}.scopes", f"{s!r} is not a scope of the origin ({', '.join(SCOPES)})")
    has = [k for k in ("password", "password_scrypt") if k in item]
    if len(has) != 1:
        raise r.error(f"{p}.password", 'give exactly one of password = "sealed" and password_scrypt')
    if "password" in item and item["password"] != "sealed":
        raise r.error(f"{p}.password", 'the only inline value is "sealed" (a random password sealed under the '
                                       "cluster secret); for your own give password_scrypt (headwater password --hash)")
    hashed = r.get(item, "password_scrypt", p, str, None)
    if hashed is not None:
        try:
            check_scrypt(hashed)
        except ValueError as e:
            raise r.error(f"{p}.password_scrypt", str(e)) from None
    return UserConfig(name=name, scopes=tuple(dict.fromkeys(scopes)), sealed="password" in item,
                      password_scrypt=hashed)


def read_origin(r: Reader, item: Mapping[str, Any], p: str) -> OriginConfig:
    """The ``[origin]`` table (and its ``[[origin.hosts]]``)."""
    base = _read_origin_table(r, item, p)
    raw_hosts = r.get(item, "hosts", p, list, [])
    if not raw_hosts:
        return base
    if len(raw_hosts) > 1 and base.catalogue_config.backend != "postgresql":
        key = f"{p}.catalogue.backend" if "backend" in r.table(item, "catalogue", p) else f"{p}.hosts[1]"
        raise r.error(key, 'several origin hosts share one catalogue: [origin.catalogue] backend = "postgresql" '
                           "(with SQLite each host would have its own uploads, tokens and titles)")
    # One iss for every host: a token one host signs is checked against it on every other. The
    # catalogue is the table's (a single host on SQLite keeps the table's file, which the
    # transcoder opens too).
    shared = replace(base, oauth=replace(base.oauth, issuer=base.issuer))
    hosts = []
    for i, h in enumerate(raw_hosts):
        hp = f"{p}.hosts[{i}]"
        if not isinstance(h, dict):
            raise r.error(hp, "expected a table")
        r.check_keys(h, hp, _HOST_KEYS)
        host_id = r.node_id(h, hp)
        data_dir = r.node_data_dir(h, hp, host_id)
        hosts.append(replace(shared, id=host_id, host=r.get(h, "host", hp, str, base.host),
                             port=r.port(h, "port", hp, base.port),
                             admin_port=r.port(h, "admin_port", hp, base.admin_port),
                             data_dir=data_dir))
    ids = [h.id for h in hosts]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise r.error(f"{p}.hosts", f"host id {dup[0]!r} is used twice")
    return replace(base, hosts=tuple(hosts))


def _read_origin_table(r: Reader, item: Mapping[str, Any], p: str) -> OriginConfig:
    r.check_keys(item, p, _KEYS)
    node_id = r.node_id(item, p, "origin")
    cert, key = r.tls_or_auto(item, p)
    endpoint = _url(r, item, "s3_endpoint", p) or ""
    access, secret = r.get(item, "access_key", p, str, ""), r.get(item, "secret_key", p, str, "")
    if bool(access) != bool(secret):
        raise r.error(f"{p}.secret_key" if access else f"{p}.access_key", "give access_key and secret_key together")
    bucket = r.get(item, "uploads_bucket", p, str, "uploads")
    if not _BUCKET.match(bucket):
        raise r.error(f"{p}.uploads_bucket", f"{bucket!r} is not an S3 bucket name")
    part = r.size(item, "part_size", p, 5 * MiB)
    if not MIN_PART_SIZE <= part <= 5 * GiB:
        raise r.error(f"{p}.part_size", "must be between 64 KiB and 5 GiB (S3 parts)")
    max_upload = r.size(item, "max_upload_size", p, 20 * GiB)
    if max_upload < 1:
        raise r.error(f"{p}.max_upload_size", "must be at least 1 byte")
    if max_upload > part * 10_000:
        raise r.error(f"{p}.max_upload_size", f"more than 10000 parts of part_size ({part} bytes): raise part_size")
    per_client = r.get(item, "max_uploads_per_client", p, int, 16)
    if per_client < 1:
        raise r.error(f"{p}.max_uploads_per_client", "must be at least 1")
    in_flight = r.get(item, "max_parts_in_flight", p, int, 8)
    if not 1 <= in_flight <= 1024:
        raise r.error(f"{p}.max_parts_in_flight", "must be between 1 and 1024")
    origins = r.get(item, "allowed_origins", p, list, [])
    for o in origins:
        parts = urlsplit(o) if isinstance(o, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise r.error(f"{p}.allowed_origins", f"{o!r} is not an origin (scheme://host[:port])")
    clients = []
    raw_clients = r.get(item, "clients", p, list, [])
    for i, c in enumerate(raw_clients):
        if not isinstance(c, dict):
            raise r.error(f"{p}.clients[{i}]", "expected a table")
        clients.append(_read_client(r, c, f"{p}.clients[{i}]"))
    ids = [c.id for c in clients]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise r.error(f"{p}.clients", f"client id {dup[0]!r} is used twice")
    users = []
    for i, u in enumerate(r.get(item, "users", p, list, [])):
        if not isinstance(u, dict):
            raise r.error(f"{p}.users[{i}]", "expected a table")
        users.append(_read_user(r, u, f"{p}.users[{i}]"))
    names = [u.name for u in users]
    dup = sorted({n for n in names if names.count(n) > 1 or n in ids})
    if dup:
        # A token's sub names a client or a user: one name cannot be both (uploads and titles
        # belong to the sub).
        raise r.error(f"{p}.users", f"user name {dup[0]!r} is used twice or is also a client id")
    limits = read_http_limits(r, r.table(item, "limits", p), f"{p}.limits", ORIGIN_HTTP_LIMITS) \
        if "limits" in item else ORIGIN_HTTP_LIMITS
    if "limits" not in item or "max_body_size" not in r.table(item, "limits", p):
        limits = replace(limits, max_body_bytes=max_upload)
    data_dir = r.node_data_dir(item, p, node_id)
    unverified = r.size(item, "max_unverified_spool", p, 2 * GiB)
    if unverified < 1:
        raise r.error(f"{p}.max_unverified_spool", "must be at least 1 byte (checksummed PATCHes need room)")
    segments = r.get(item, "max_incomplete_segments", p, int, 8)
    if not 1 <= segments <= 1000:
        raise r.error(f"{p}.max_incomplete_segments", "must be between 1 and 1000")
    lease = r.positive(item, "upload_lease_seconds", p, 30.0)
    grace = r.positive(item, "upload_orphan_grace_seconds", p, 3600.0)
    if grace <= lease + UPLOAD_STORE_TIMEOUT_S:
        # A segment is named by its record within a lease of its PUT (the request's fence);
        # the margin is the PUT itself, which may take a store request's whole timeout.
        raise r.error(f"{p}.upload_orphan_grace_seconds",
                      f"{grace:g} must be more than upload_lease_seconds + {UPLOAD_STORE_TIMEOUT_S:g} s "
                      f"({lease + UPLOAD_STORE_TIMEOUT_S:g}): a segment being written would look orphaned")
    threads = r.get(item, "catalogue_threads", p, int, 8)
    if not 1 <= threads <= 256:
        raise r.error(f"{p}.catalogue_threads", "must be between 1 and 256")
    videos = r.get(item, "videos_bucket", p, str, "videos")
    if not _BUCKET.match(videos):
        raise r.error(f"{p}.videos_bucket", f"{videos!r} is not an S3 bucket name")
    return OriginConfig(
        videos_bucket=videos,
        delivery=read_delivery(r, r.table(item, "delivery", p), f"{p}.delivery"),
        id=node_id, host=r.get(item, "host", p, str, "127.0.0.1"), port=r.port(item, "port", p, 8090),
        admin_port=r.port(item, "admin_port", p, 9090), tls_cert=cert, tls_key=key,
        data_dir=data_dir, s3_endpoint=endpoint.rstrip("/"), access_key=access,
        secret_key=secret, region=r.get(item, "region", p, str, ""), uploads_bucket=bucket, part_size=part,
        max_upload_bytes=max_upload, max_uploads_per_client=per_client,
        max_parts_in_flight=in_flight,
        upload_expiry_s=r.positive(item, "upload_expiry_seconds", p, 86400.0),
        max_metadata_bytes=r.size(item, "max_metadata_size", p, 4 * KiB),
        state_map_bytes=r.size(item, "state_map_size", p, 64 * MiB),
        upload_lease_s=lease, upload_orphan_grace_s=grace,
        max_incomplete_segments=segments,
        max_unverified_spool_bytes=unverified,
        min_spool_free_bytes=r.size(item, "min_spool_free", p, 1 * GiB),
        upload_retention_s=r.positive(item, "upload_retention_seconds", p, 7 * 86400.0),
        allowed_origins=tuple(o.rstrip("/") for o in origins),
        cors_max_age_s=r.get(item, "cors_max_age_seconds", p, int, 600),
        oauth=_read_oauth(r, r.table(item, "oauth", p), f"{p}.oauth"), clients=tuple(clients),
        users=tuple(users), limits=limits,
        catalogue=read_catalogue(r, r.table(item, "catalogue", p), f"{p}.catalogue", data_dir),
        catalogue_threads=threads,
        rate_limits=read_rate_limits(r, r.table(item, "rate_limits", p), f"{p}.rate_limits"))
