"""The DRM package's part of cluster.toml: the ``[licence]`` daemon (the ClearKey licence server
and its key store).

Read once through the kernel's :class:`~headwater.config.Reader` (errors name the key and its
line) into frozen dataclasses; every licence default lives here. Keys of ``[licence]``::

    id, host, port, admin_port, data_dir      (defaults: "licence", 127.0.0.1, 8443, 9443, data_dir/licence)
    rpc_port                                  (unset: none; the port of the ``keys.title`` RPC that gives
                                               transcoders on other hosts titles' keys, authenticated by
                                               the cluster secret; unset, transcoders must run on this host)
    tls_cert, tls_key                         ("auto" by default: the local CA's leaf; files; or tls = false)
    kek_file | kek_env                        (the key-encryption key; default data_dir/licence/kek, made
                                               on first use)
    key_store_size                            (LMDB map size, "256MiB")
    max_request_size, max_kids                (a licence request: "8KiB", 32)
    allowed_origins, cors_max_age_seconds     (CORS: [] = any origin, echoed; 600)
    [licence.tokens]   issuer, audience, leeway_seconds, max_lifetime_seconds, replay_cache_entries
    [[licence.tokens.keys]]  id, alg = "HS256" | "ES256", and for HS256 one of secret = "sealed",
                       secret_file, secret_env; for ES256 public_key_file (and private_key_file
                       where `headwater entitle` signs) or jwks_url (jwks_refresh_seconds,
                       jwks_min_refresh_seconds: the least time between fetches a token with an
                       unknown kid may cause, default 30; jwks_max_size, jwks_max_keys)
    [licence.policy]   types, licence_duration_seconds, single_use, require_device
    [[licence.titles]] title plus any [licence.policy] key
    [licence.rate_limits]  enabled, per_address_per_second, per_address_burst, per_user_per_second,
                       per_user_burst, max_addresses, max_users
    [licence.limits]   the HTTP core's limits (as [gateway.limits])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from headwater.config import TLS_AUTO, HttpLimits, KiB, MiB, Reader, read_http_limits
from headwater.tokenbucket import RateLimit

from .licence.clearkey import MAX_KIDS, MAX_REQUEST_BYTES
from .licence.policy import Policy, read_policy
from .licence.ratelimit import LicenceLimits

__all__ = ["TokenKeyConfig", "TokenConfig", "LicenceConfig", "read_licence", "LICENCE_HTTP_LIMITS"]

# A licence request is a few hundred bytes: the HTTP core refuses anything far larger before the
# app reads it, and a body slower than the minimum rate is cut off (the kernel's guards).
LICENCE_HTTP_LIMITS = HttpLimits(max_header_bytes=16 * KiB, max_body_bytes=64 * KiB, header_timeout_s=10.0,
                                 idle_timeout_s=30.0, body_timeout_s=10.0, max_connections=10_000,
                                 min_body_rate_bytes_per_s=256, min_body_rate_window_s=5.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenKeyConfig:
    """One ``[[licence.tokens.keys]]`` entry: a key entitlement tokens are verified with."""

    id: str
    alg: str
    # HS256: where the secret comes from ("sealed": made and sealed under the cluster secret in
    # the daemon's data_dir, shared with `headwater entitle`).
    secret: str | None = None
    secret_file: Path | None = None
    secret_env: str | None = None
    # ES256: a PEM public key, and optionally the private key (only where tokens are minted).
    public_key_file: Path | None = None
    private_key_file: Path | None = None
    # ES256: an issuer's JWKS, fetched at start and every jwks_refresh_s (bounded size and count).
    jwks_url: str | None = None
    jwks_refresh_s: float = 300.0
    jwks_min_refresh_s: float = 30.0   # an unknown kid fetches again, at most this often
    jwks_max_bytes: int = 64 * KiB
    jwks_max_keys: int = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenConfig:
    """``[licence.tokens]``."""

    keys: tuple[TokenKeyConfig, ...] = ()
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 30.0
    max_lifetime_s: float = 7 * 24 * 3600.0
    replay_cache_entries: int = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenceConfig:
    """The ``licence`` daemon."""

    id: str = "licence"
    host: str = "127.0.0.1"
    port: int = 8443
    admin_port: int = 9443
    rpc_port: int | None = None
    tls_cert: str | None = TLS_AUTO
    tls_key: str | None = TLS_AUTO
    data_dir: Path = Path("var/licence")
    kek_file: Path | None = None
    kek_env: str | None = None
    key_store_bytes: int = 256 * MiB
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_kids: int = MAX_KIDS
    allowed_origins: tuple[str, ...] = ()
    cors_max_age_s: int = 600
    tokens: TokenConfig = TokenConfig()
    policy: Policy = field(default_factory=Policy)
    rate_limits: LicenceLimits = LicenceLimits()
    limits: HttpLimits = LICENCE_HTTP_LIMITS

    @property
    def role(self) -> str:
        return "licence"

    @property
    def port_keys(self) -> tuple[str, ...]:
        return ("port", "admin_port") + (("rpc_port",) if self.rpc_port is not None else ())

    @property
    def needs_cluster_secret(self) -> bool:
        """With the key RPC (its callers prove the secret), TLS "auto" (the local CA's key is
        sealed) or a sealed HS256 secret."""
        return (self.rpc_port is not None or self.tls_cert == TLS_AUTO
                or any(k.secret == "sealed" for k in self.tokens.keys))

    @property
    def key_store_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.log"


_KEYS = {"id", "host", "port", "admin_port", "rpc_port", "tls", "tls_cert", "tls_key", "data_dir", "kek_file", "kek_env",
         "key_store_size", "max_request_size", "max_kids", "allowed_origins", "cors_max_age_seconds",
         "tokens", "policy", "titles", "rate_limits", "limits"}
_TOKEN_KEYS = {"keys", "issuer", "audience", "leeway_seconds", "max_lifetime_seconds", "replay_cache_entries"}
_KEY_KEYS = {"id", "alg", "secret", "secret_file", "secret_env", "public_key_file", "private_key_file",
             "jwks_url", "jwks_refresh_seconds", "jwks_min_refresh_seconds", "jwks_max_size", "jwks_max_keys"}
_RATE_KEYS = {"enabled", "per_address_per_second", "per_address_burst", "per_user_per_second", "per_user_burst",
              "max_addresses", "max_users"}


def _path(r: Reader, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else r.root / p


def _env_name(r: Reader, data: Mapping[str, Any], key: str, p: str) -> str | None:
    name = r.get(data, key, p, str, None)
    if name is not None and not (name.replace("_", "a").isalnum() and not name[0].isdigit()):
        raise r.error(f"{p}.{key}", f"{name!r} is not an environment variable name")
    return name


def _read_token_key(r: Reader, item: Mapping[str, Any], p: str) -> TokenKeyConfig:
    r.check_keys(item, p, _KEY_KEYS)
    key_id = r.get(item, "id", p, str, required=True)
    if not key_id or len(key_id) > 64:
        raise r.error(f"{p}.id", "1..64 characters (the tokens' kid)")
    alg = r.get(item, "alg", p, str, required=True)
    if alg not in ("HS256", "ES256"):
        raise r.error(f"{p}.alg", f"{alg!r} is not HS256 or ES256")
    hs = {k for k in ("secret", "secret_file", "secret_env") if k in item}
    es = {k for k in ("public_key_file", "jwks_url") if k in item}
    if alg == "HS256":
        if len(hs) != 1 or es or "private_key_file" in item:
            raise r.error(f"{p}.alg", 'an HS256 key takes exactly one of secret = "sealed", secret_file, secret_env')
        if "secret" in item and item["secret"] != "sealed":
            raise r.error(f"{p}.secret", 'the only inline value is "sealed" (a secret made and sealed under the '
                                         "cluster secret); put a real secret in secret_file or secret_env")
    else:
        if len(es) != 1 or hs:
            raise r.error(f"{p}.alg", "an ES256 key takes exactly one of public_key_file, jwks_url")
    files: dict[str, Path | None] = {}
    for name in ("secret_file", "public_key_file", "private_key_file"):
        raw = r.get(item, name, p, str, None)
        files[name] = None if raw is None else _path(r, raw)
        if name == "public_key_file" and files[name] is not None and not files[name].is_file():
            raise r.error(f"{p}.{name}", f"cannot read {files[name]}")
    url = r.get(item, "jwks_url", p, str, None)
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        raise r.error(f"{p}.jwks_url", "must be an http:// or https:// URL")
    return TokenKeyConfig(
        id=key_id, alg=alg, secret=r.get(item, "secret", p, str, None), secret_file=files["secret_file"],
        secret_env=_env_name(r, item, "secret_env", p), public_key_file=files["public_key_file"],
        private_key_file=files["private_key_file"], jwks_url=url,
        jwks_refresh_s=r.positive(item, "jwks_refresh_seconds", p, 300.0),
        jwks_min_refresh_s=r.positive(item, "jwks_min_refresh_seconds", p, 30.0),
        jwks_max_bytes=r.size(item, "jwks_max_size", p, 64 * KiB),
        jwks_max_keys=r.get(item, "jwks_max_keys", p, int, 16))


def _read_tokens(r: Reader, data: Mapping[str, Any], p: str) -> TokenConfig:
    r.check_keys(data, p, _TOKEN_KEYS)
    raw_keys = r.get(data, "keys", p, list, [])
    keys = []
    for i, item in enumerate(raw_keys):
        if not isinstance(item, dict):
            raise r.error(f"{p}.keys[{i}]", "expected a table")
        keys.append(_read_token_key(r, item, f"{p}.keys[{i}]"))
    ids = [k.id for k in keys]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise r.error(f"{p}.keys", f"key id {dup[0]!r} is used twice")
    entries = r.get(data, "replay_cache_entries", p, int, 100_000)
    if entries < 1:
        raise r.error(f"{p}.replay_cache_entries", "must be at least 1")
    return TokenConfig(keys=tuple(keys), issuer=r.get(data, "issuer", p, str, None),
                       audience=r.get(data, "audience", p, str, None),
                       leeway_s=r.non_negative(data, "leeway_seconds", p, 30.0),
                       max_lifetime_s=r.positive(data, "max_lifetime_seconds", p, 7 * 24 * 3600.0),
                       replay_cache_entries=entries)


def _read_rate_limits(r: Reader, data: Mapping[str, Any], p: str) -> LicenceLimits:
    r.check_keys(data, p, _RATE_KEYS)
    d = LicenceLimits()
    try:
        addr = RateLimit(requests_per_s=r.positive(data, "per_address_per_second", p, d.per_address.requests_per_s),
                         burst=r.positive(data, "per_address_burst", p, d.per_address.burst))
        user = RateLimit(requests_per_s=r.positive(data, "per_user_per_second", p, d.per_user.requests_per_s),
                         burst=r.positive(data, "per_user_burst", p, d.per_user.burst))
    except ValueError as e:
        raise r.error(p, str(e)) from None
    sizes = {}
    for name in ("max_addresses", "max_users"):
        sizes[name] = r.get(data, name, p, int, 100_000)
        if sizes[name] < 1:
            raise r.error(f"{p}.{name}", "must be at least 1")
    return LicenceLimits(enabled=r.get(data, "enabled", p, bool, True), per_address=addr, per_user=user, **sizes)


def read_licence(r: Reader, item: Mapping[str, Any], p: str) -> LicenceConfig:
    """The ``[licence]`` table."""
    r.check_keys(item, p, _KEYS)
    node_id = r.node_id(item, p, "licence")
    cert, key = r.tls_or_auto(item, p)
    kek_raw = r.get(item, "kek_file", p, str, None)
    kek_env = _env_name(r, item, "kek_env", p)
    if kek_raw is not None and kek_env is not None:
        raise r.error(f"{p}.kek_env", "give kek_file or kek_env, not both")
    data_dir = r.node_data_dir(item, p, node_id)
    kek_file = _path(r, kek_raw) if kek_raw is not None else (None if kek_env else data_dir / "kek")
    max_kids = r.get(item, "max_kids", p, int, MAX_KIDS)
    if not 1 <= max_kids <= 1024:
        raise r.error(f"{p}.max_kids", "must be between 1 and 1024")
    max_req = r.size(item, "max_request_size", p, MAX_REQUEST_BYTES)
    if not 64 <= max_req <= 1 * MiB:
        raise r.error(f"{p}.max_request_size", "must be between 64 bytes and 1 MiB")
    origins = r.get(item, "allowed_origins", p, list, [])
    for o in origins:
        parts = urlsplit(o) if isinstance(o, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise r.error(f"{p}.allowed_origins", f"{o!r} is not an origin (scheme://host[:port])")
    limits = read_http_limits(r, r.table(item, "limits", p), f"{p}.limits", LICENCE_HTTP_LIMITS)
    if limits.max_body_bytes < max_req:
        raise r.error(f"{p}.limits.max_body_size", "must be at least max_request_size")
    return LicenceConfig(
        id=node_id, host=r.get(item, "host", p, str, "127.0.0.1"), port=r.port(item, "port", p, 8443),
        admin_port=r.port(item, "admin_port", p, 9443),
        rpc_port=r.port(item, "rpc_port", p) if "rpc_port" in item else None, tls_cert=cert, tls_key=key, data_dir=data_dir,
        kek_file=kek_file, kek_env=kek_env, key_store_bytes=r.size(item, "key_store_size", p, 256 * MiB),
        max_request_bytes=max_req, max_kids=max_kids, allowed_origins=tuple(o.rstrip("/") for o in origins),
        cors_max_age_s=r.get(item, "cors_max_age_seconds", p, int, 600),
        tokens=_read_tokens(r, r.table(item, "tokens", p), f"{p}.tokens"),
        policy=read_policy(r, r.table(item, "policy", p), item.get("titles", []), p),
        rate_limits=_read_rate_limits(r, r.table(item, "rate_limits", p), f"{p}.rate_limits"),
        limits=limits)
