"""cluster.toml, read once and validated into frozen dataclasses: the kernel's part.

The kernel reads ``[cluster]`` itself and hands every other section to the daemon package that
registered it (:mod:`headwater.roles`): a role's reader gets a :class:`Reader`, which pulls typed
values out of the parsed TOML and raises :class:`ConfigError` naming the key and the line it sits
on, before anything starts. The kernel then checks what holds across every daemon (unique ids,
unique addresses) and runs each package's own cross-section checks.

Every kernel default lives in this module; each daemon package keeps its own defaults beside its
dataclasses.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol

__all__ = [
    "ConfigError",
    "ClusterConfig",
    "TLS_AUTO",
    "DaemonConfig",
    "HttpLimits",
    "Reader",
    "read_http_limits",
    "valid_id",
    "load",
    "loads",
    "parse_size",
    "KiB", "MiB", "GiB", "TiB",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
               "g": GiB, "gb": GiB, "gib": GiB, "t": TiB, "tb": TiB, "tib": TiB}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
#: ``tls_cert = "auto"`` with ``tls_key = "auto"``: the leaf the cluster's local CA issues
#: (:mod:`headwater.localca`) instead of files the operator provides.
TLS_AUTO = "auto"


class ConfigError(Exception):
    """A cluster.toml that cannot be used; the message names the key and, when known, the line."""

    def __init__(self, key: str, message: str, *, path: str | None = None, line: int | None = None):
        self.key = key
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"{where}{key}: {message}")


def parse_size(value: Any, key: str = "size") -> int:
    """Parse a byte size given as an int or a string like "1MiB" / "64 KiB"."""
    if isinstance(value, bool):
        raise ConfigError(key, "expected a size such as 1048576 or \"1MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(key, "a size cannot be negative")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ConfigError(key, f"expected a size such as 1048576 or \"1MiB\", got {value!r}")


def valid_id(node_id: str) -> bool:
    """Daemon ids are file and URL safe: letters, digits, ``. _ -``, at most 63 characters."""
    return _ID.fullmatch(node_id) is not None


class DaemonConfig(Protocol):
    """What the kernel needs of every daemon's config: who it is and where it listens.

    A daemon config may also set ``port_keys`` (the cluster.toml keys of its distinct ports, when
    it does not listen on both ``port`` and ``admin_port``), ``workers`` (processes sharing its
    port, for roles registered with ``workers=True``) and ``needs_cluster_secret`` (true when it
    opens sealed secrets, so ``headwater up`` makes the cluster secret even without RPC roles).
    """

    @property
    def id(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def admin_port(self) -> int: ...
    @property
    def role(self) -> str: ...


def port_keys(d: DaemonConfig) -> tuple[str, ...]:
    """The cluster.toml keys naming ``d``'s distinct listening ports."""
    return tuple(getattr(d, "port_keys", ("port", "admin_port")))


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """Limits the HTTP server core enforces on every connection."""

    max_header_bytes: int = 64 * KiB
    max_body_bytes: int = 5 * GiB
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    body_timeout_s: float = 60.0
    max_concurrent_streams: int = 128
    max_connections: int = 10_000
    # A write (HTTP/1.1 socket, HTTP/2 socket or flow-control window) making no progress this
    # long drops the connection or stream, like nginx's send_timeout.
    send_timeout_s: float = 60.0
    # A request body slower than this on average over each window of waiting is answered 408
    # (Apache mod_reqtimeout's MinRate); 0 disables it. body_timeout_s still bounds one read.
    min_body_rate_bytes_per_s: int = 1 * KiB
    min_body_rate_window_s: float = 10.0
    # A peer taking our bytes slower than this on average over each window of waiting for it
    # (IIS's minBytesPerSecond, 240); 0 disables it. An HTTP/2 response whose flow-control
    # windows open that slowly (WINDOW_UPDATEs of a few bytes, each in time for send_timeout_s)
    # has its stream reset; a connection (either protocol) whose blocked socket sends see that
    # few bytes acknowledged (a tiny receive buffer read a few bytes at a time) is dropped
    # (http/send_floor.py). Low, as the streams of one connection share its window: 50 at once
    # on a 100 kbit/s link pass.
    min_send_rate_bytes_per_s: int = 256
    min_send_rate_window_s: float = 10.0
    # HTTP/2 frames cheap for the client and costly for us, that neither open nor end a stream
    # nor move useful data (RST_STREAM, PING, SETTINGS, PRIORITY and PRIORITY_UPDATE, unknown
    # frame types, empty DATA, refused streams, unsolicited acks, DATA, HEADERS and
    # WINDOW_UPDATE of closed streams, WINDOW_UPDATEs beyond one per 4 KiB of DATA sent) draw
    # on a per-connection bucket of h2_flood_burst tokens refilled at h2_flood_rate_per_s; an
    # empty bucket means GOAWAY(ENHANCE_YOUR_CALM). headwater/http/h2.py has the exact rules.
    h2_flood_rate_per_s: float = 100.0
    h2_flood_burst: int = 400


def read_http_limits(r: Reader, data: Mapping[str, Any], prefix: str,
                     defaults: HttpLimits | None = None) -> HttpLimits:
    """A ``[<daemon>.limits]`` table: every HTTP-serving daemon reads its limits through this.
    A key the table leaves out keeps the daemon's own default (``defaults``), not the core's:
    setting one limit must not quietly loosen the others."""
    d = defaults if defaults is not None else HttpLimits()
    r.check_keys(data, prefix, {"max_header_size", "max_body_size", "header_timeout_seconds",
                                "idle_timeout_seconds", "body_timeout_seconds",
                                "max_concurrent_streams", "max_connections", "send_timeout_seconds",
                                "min_body_rate", "min_body_rate_window_seconds",
                                "min_send_rate", "min_send_rate_window_seconds",
                                "h2_flood_rate_per_second", "h2_flood_burst"})
    return HttpLimits(
        max_header_bytes=r.size(data, "max_header_size", prefix, d.max_header_bytes),
        max_body_bytes=r.size(data, "max_body_size", prefix, d.max_body_bytes),
        header_timeout_s=r.get(data, "header_timeout_seconds", prefix, float, d.header_timeout_s),
        idle_timeout_s=r.get(data, "idle_timeout_seconds", prefix, float, d.idle_timeout_s),
        body_timeout_s=r.get(data, "body_timeout_seconds", prefix, float, d.body_timeout_s),
        max_concurrent_streams=r.get(data, "max_concurrent_streams", prefix, int, d.max_concurrent_streams),
        max_connections=r.get(data, "max_connections", prefix, int, d.max_connections),
        send_timeout_s=r.positive(data, "send_timeout_seconds", prefix, d.send_timeout_s),
        min_body_rate_bytes_per_s=r.size(data, "min_body_rate", prefix, d.min_body_rate_bytes_per_s),
        min_body_rate_window_s=r.positive(data, "min_body_rate_window_seconds", prefix, d.min_body_rate_window_s),
        min_send_rate_bytes_per_s=r.size(data, "min_send_rate", prefix, d.min_send_rate_bytes_per_s),
        min_send_rate_window_s=r.positive(data, "min_send_rate_window_seconds", prefix, d.min_send_rate_window_s),
        h2_flood_rate_per_s=r.positive(data, "h2_flood_rate_per_second", prefix, d.h2_flood_rate_per_s),
        h2_flood_burst=int(r.positive(data, "h2_flood_burst", prefix, d.h2_flood_burst)),
    )


class ClusterConfig:
    """The whole cluster as one cluster.toml describes it.

    ``[cluster]`` keys are attributes; every registered section is reached by its name too:
    ``cfg.objstore`` (a table section: its dataclass, or its default when the file has none),
    ``cfg.storage`` (an array of daemon tables: a tuple), ``cfg.gateway`` (one daemon table: its
    config, or None). Frozen: :meth:`replace` returns a changed copy.
    """

    __slots__ = ("name", "runtime", "log_level", "path", "data_dir", "secret_file", "secret_env", "_sections")

    name: str
    runtime: str
    log_level: str
    path: Path | None
    data_dir: Path
    # The cluster secret every node proves before its RPC calls are served (headwater.rpc.auth):
    # the variable ``secret_env`` names when it is set, else the file ``secret_file``. Neither
    # given in cluster.toml: the file <data_dir>/cluster.secret.
    secret_file: Path | None
    secret_env: str | None

    def __init__(self, *, name: str = "headwater", runtime: str = "asyncio", log_level: str = "info",
                 path: Path | None = None, data_dir: Path = Path("var"), secret_file: Path | None = None,
                 secret_env: str | None = None, **sections: Any) -> None:
        from .roles import registry

        known = registry().section_names()
        unknown = sorted(set(sections) - known)
        if unknown:
            raise TypeError(f"ClusterConfig has no section {', '.join(unknown)} "
                            f"(registered: {', '.join(sorted(known))})")
        for key, value in (("name", name), ("runtime", runtime), ("log_level", log_level),
                           ("path", path), ("data_dir", data_dir), ("secret_file", secret_file),
                           ("secret_env", secret_env), ("_sections", dict(sections))):
            object.__setattr__(self, key, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        sections = object.__getattribute__(self, "_sections")
        if name in sections:
            return sections[name]
        from .roles import registry

        try:
            return registry().default(name)
        except KeyError:
            raise AttributeError(f"cluster config has no section or attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ClusterConfig is frozen; use .replace({name}=...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterConfig) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.name, self.path))

    def __repr__(self) -> str:
        return f"ClusterConfig(name={self.name!r}, path={self.path!r}, sections={sorted(self._sections)})"

    def _fields(self) -> dict[str, Any]:
        return {"name": self.name, "runtime": self.runtime, "log_level": self.log_level,
                "path": self.path, "data_dir": self.data_dir, "secret_file": self.secret_file,
                "secret_env": self.secret_env, **self._sections}

    def replace(self, **changes: Any) -> ClusterConfig:
        """A copy with ``changes`` applied (``[cluster]`` keys or whole sections)."""
        return ClusterConfig(**{**self._fields(), **changes})

    def with_roles(self, names: Iterable[str]) -> ClusterConfig:
        """A copy whose daemons are only those of the roles ``names`` (``up --roles``): the
        other roles' daemon sections emptied, every table section kept. Raises ConfigError
        naming an unknown role."""
        from .roles import registry

        wanted = set(names)
        roles = {r.name: r for r in registry().roles()}
        unknown = sorted(wanted - set(roles))
        if unknown:
            raise ConfigError("roles", f"no role {', '.join(map(repr, unknown))} "
                                       f"(roles: {', '.join(roles)})")
        return self.replace(**{r.section: (() if r.many else None)
                               for name, r in roles.items() if name not in wanted})

    def daemons(self) -> list[DaemonConfig]:
        """Every daemon, in the order the supervisor starts them (the registry's start order)."""
        from .roles import registry

        out: list[DaemonConfig] = []
        for role in registry().roles():
            value = getattr(self, role.section)
            if role.many:
                out.extend(value)
            elif value is not None:
                # A one-table role may stand for several daemons (``[[origin.hosts]]``): its
                # ``hosts``, each a config of its own.
                out.extend(getattr(value, "hosts", ()) or (value,))
        return out

    def daemon(self, node_id: str) -> DaemonConfig:
        for d in self.daemons():
            if d.id == node_id:
                return d
        raise ConfigError("node", f"no daemon with id {node_id!r} in {self.path or 'the config'}")


# --- line lookup -------------------------------------------------------------------------------

def _key_lines(text: str) -> dict[str, int]:
    """Map dotted key paths (``storage[2].port``) to the 1-based line that sets them.

    tomllib reports no positions, so this scans table headers and ``key =`` lines; it covers the
    plain layout cluster.toml uses, which is all an error message needs.
    """
    lines: dict[str, int] = {}
    table = ""
    counts: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("[["):
            name = s[2:s.index("]]")].strip().replace('"', "")
            idx = counts.get(name, -1) + 1
            counts[name] = idx
            table = f"{name}[{idx}]"
            lines.setdefault(table, n)
            continue
        if s.startswith("["):
            table = s[1:s.index("]")].strip().replace('"', "")
            lines.setdefault(table, n)
            continue
        m = re.match(r'("?[A-Za-z0-9_.\-]+"?)\s*=', s)
        if m:
            key = m.group(1).replace('"', "")
            lines.setdefault(f"{table}.{key}" if table else key, n)
    return lines


class Reader:
    """Pulls typed values out of the parsed TOML, raising ConfigError that names key and line.

    Daemon packages read their sections through it: ``root`` is the folder relative paths
    resolve against, ``data_dir`` the cluster's data directory (each node's default lives in
    ``data_dir/<id>``), ``document`` the whole parsed file, for the few kernel readers that take
    one role's facts from another's section (:mod:`headwater.geo.pops`).
    """

    def __init__(self, path: str | None, text: str, *, root: Path | None = None,
                 data_dir: Path | None = None, document: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.document: Mapping[str, Any] = document if document is not None else {}
        self.lines = _key_lines(text)
        self.root = root or Path.cwd()
        self.data_dir = data_dir or self.root / "var"

    def error(self, key: str, message: str) -> ConfigError:
        line = self.lines.get(key)
        probe = key
        while line is None and "." in probe:
            probe = probe.rsplit(".", 1)[0]
            line = self.lines.get(probe)
        return ConfigError(key, message, path=self.path, line=line)

    def table(self, data: Mapping[str, Any], name: str, prefix: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(_join(prefix, name), "expected a table")
        return value

    def check_keys(self, data: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                raise self.error(_join(prefix, key), f"unknown key (known: {', '.join(sorted(allowed))})")

    def get(self, data: Mapping[str, Any], key: str, prefix: str, kind: type | tuple[type, ...],
            default: Any = ..., *, required: bool = False) -> Any:
        full = _join(prefix, key)
        if key not in data:
            if required or default is ...:
                raise self.error(full, "is required")
            return default
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            raise self.error(full, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(full, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def port(self, data: Mapping[str, Any], key: str, prefix: str, default: Any = ...) -> int:
        value = self.get(data, key, prefix, int, default)
        if not 1 <= value <= 65535:
            raise self.error(_join(prefix, key), f"port {value} is outside 1..65535")
        return value

    def size(self, data: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
        if key not in data:
            return default
        try:
            return parse_size(data[key], _join(prefix, key))
        except ConfigError as e:
            raise self.error(_join(prefix, key), str(e).split(": ", 1)[-1]) from None


    def positive(self, data: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
        value = self.get(data, key, prefix, float, default)
        if value <= 0:
            raise self.error(_join(prefix, key), f"{value} must be positive")
        return value

    def non_negative(self, data: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
        value = self.get(data, key, prefix, float, default)
        if value < 0:
            raise self.error(_join(prefix, key), f"{value} is negative")
        return value

    def node_id(self, data: Mapping[str, Any], prefix: str, default: Any = ...) -> str:
        """A daemon's ``id``: required unless ``default`` is given, and file and URL safe."""
        node_id = self.get(data, "id", prefix, str, default, required=default is ...)
        if not valid_id(node_id):
            raise self.error(_join(prefix, "id"), f"{node_id!r} is not a valid id (letters, digits, . _ -)")
        return node_id

    def tls_files(self, data: Mapping[str, Any], prefix: str) -> tuple[str | None, str | None]:
        """``tls_cert`` and ``tls_key``: both or neither, each readable now (relative to the file's
        folder), so a daemon never starts serving cleartext where TLS was asked for; or both
        ``"auto"`` (:data:`TLS_AUTO`): the local CA's leaf, made when the daemon starts."""
        files: dict[str, str | None] = {"tls_cert": None, "tls_key": None}
        autos = [name for name in ("tls_cert", "tls_key") if data.get(name) == TLS_AUTO]
        if autos:
            if len(autos) == 1:
                other = "tls_key" if autos[0] == "tls_cert" else "tls_cert"
                raise self.error(_join(prefix, other), f'must be "{TLS_AUTO}" too when {_join(prefix, autos[0])} '
                                 "is (the local CA issues the certificate and its key together)")
            return TLS_AUTO, TLS_AUTO
        for name, other in (("tls_cert", "tls_key"), ("tls_key", "tls_cert")):
            raw = self.get(data, name, prefix, str, None)
            if raw is None:
                continue
            if other not in data:
                raise self.error(_join(prefix, name),
                                 f"needs {_join(prefix, other)} too (TLS takes a certificate and its key)")
            file = Path(raw).expanduser()
            if not file.is_absolute():
                file = self.root / file
            try:
                with open(file, "rb") as f:
                    f.read(1)
            except OSError as e:
                raise self.error(_join(prefix, name), f"cannot read {file}: {e.strerror}") from None
            files[name] = str(file)
        return files["tls_cert"], files["tls_key"]

    def tls_or_auto(self, data: Mapping[str, Any], prefix: str) -> tuple[str | None, str | None]:
        """For a daemon that serves HTTPS unless told not to: ``tls = false`` is plain HTTP (and
        refuses ``tls_cert``/``tls_key`` beside it); otherwise the files of :meth:`tls_files`,
        or the local CA's leaf (:data:`TLS_AUTO`) when none are named."""
        if self.get(data, "tls", prefix, bool, True):
            cert, key = self.tls_files(data, prefix)
            return (TLS_AUTO, TLS_AUTO) if cert is None else (cert, key)
        if "tls_cert" in data or "tls_key" in data:
            raise self.error(_join(prefix, "tls"), "tls = false serves plain HTTP: drop tls_cert and tls_key")
        return None, None

    def node_data_dir(self, data: Mapping[str, Any], prefix: str, node_id: str) -> Path:
        """A daemon's ``data_dir``: as given (relative to cluster.toml), else ``data_dir/<id>``."""
        raw = self.get(data, "data_dir", prefix, str, "")
        path = Path(raw) if raw else self.data_dir / node_id
        return path if path.is_absolute() else self.root / path


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "an array", dict: "a table"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)



# --- reading -----------------------------------------------------------------------------------

_CLUSTER_KEYS = {"name", "runtime", "log_level", "data_dir", "secret_file", "secret_env"}


def loads(text: str, *, path: str | None = None, env: Mapping[str, str] | None = None) -> ClusterConfig:
    """Parse cluster.toml text. Relative data directories resolve against the file's folder."""
    from .roles import registry

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError("toml", str(e), path=path, line=int(m.group(1)) if m else None) from None
    root = Path(path).resolve().parent if path else Path.cwd()
    r = Reader(path, text, root=root, document=data)
    reg = registry()
    r.check_keys(data, "", {"cluster", *reg.section_names()})

    cl = r.table(data, "cluster", "")
    r.check_keys(cl, "cluster", _CLUSTER_KEYS)
    runtime = r.get(cl, "runtime", "cluster", str, "asyncio")
    if runtime not in ("asyncio", "trio"):
        raise r.error("cluster.runtime", f"{runtime!r} is not one of asyncio, trio")
    log_level = r.get(cl, "log_level", "cluster", str, "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise r.error("cluster.log_level", f"{log_level!r} is not one of debug, info, warning, error")
    base = Path(r.get(cl, "data_dir", "cluster", str, "var"))
    r.data_dir = base if base.is_absolute() else root / base
    secret_env = r.get(cl, "secret_env", "cluster", str, None)
    if secret_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", secret_env):
        raise r.error("cluster.secret_env", f"{secret_env!r} is not an environment variable name")
    secret_file = r.get(cl, "secret_file", "cluster", str, None)
    if secret_file is not None:
        secret_file = Path(secret_file).expanduser()
        secret_file = secret_file if secret_file.is_absolute() else root / secret_file
    elif secret_env is None:
        secret_file = r.data_dir / "cluster.secret"

    sections: dict[str, Any] = {}
    for section in reg.sections():
        if section.name in data:
            sections[section.name] = section.read(r, data[section.name])
    for role in reg.roles():
        if role.section in data:
            sections[role.section] = _read_daemons(r, data[role.section], role)

    cfg = ClusterConfig(name=r.get(cl, "name", "cluster", str, "headwater"), runtime=runtime,
                        log_level=log_level, path=Path(path).resolve() if path else None,
                        data_dir=r.data_dir, secret_file=secret_file, secret_env=secret_env, **sections)
    _check_addresses(r, cfg)
    for check in reg.checks():
        check(r, cfg, env or os.environ)
    return cfg


def _read_daemons(r: Reader, raw: Any, role: Any) -> Any:
    """One ``[section]`` daemon, or the tuple of a ``[[section]]`` array, through the role's reader."""
    if not role.many:
        if not isinstance(raw, dict):
            raise r.error(role.section, "expected a table")
        return role.read(r, raw, role.section)
    if not isinstance(raw, list):
        raise r.error(role.section, f"expected an array of tables ([[{role.section}]])")
    out = []
    for i, item in enumerate(raw):
        prefix = f"{role.section}[{i}]"
        if not isinstance(item, dict):
            raise r.error(prefix, "expected a table")
        out.append(role.read(r, item, prefix))
    return tuple(out)


def _keyed_daemons(cfg: ClusterConfig) -> Iterator[tuple[str, DaemonConfig]]:
    """Every daemon with the cluster.toml prefix its keys sit under (``storage[2]``, ``gateway``)."""
    from .roles import registry

    for role in registry().roles():
        value = getattr(cfg, role.section)
        if role.many:
            yield from ((f"{role.section}[{i}]", d) for i, d in enumerate(value))
        elif value is not None:
            yield role.section, value


def _check_addresses(r: Reader, cfg: ClusterConfig) -> None:
    """No two daemons share an id, and no two listen on one address."""
    seen_ids: dict[str, str] = {}
    seen_ports: dict[tuple[str, int], str] = {}
    for prefix, d in _keyed_daemons(cfg):
        if d.id in seen_ids:
            raise r.error(f"{prefix}.id", f"id {d.id!r} is also used by {seen_ids[d.id]}")
        seen_ids[d.id] = prefix
        for attr in port_keys(d):
            addr = (d.host, getattr(d, attr))
            if addr in seen_ports:
                raise r.error(f"{prefix}.{attr}", f"{addr[0]}:{addr[1]} is also used by {seen_ports[addr]}")
            seen_ports[addr] = f"{prefix}.{attr}"


def load(path: str | os.PathLike[str] | None = None) -> ClusterConfig:
    """Read cluster.toml from ``path`` (default: $HEADWATER_CONFIG, else ./cluster.toml)."""
    p = Path(path or os.environ.get("HEADWATER_CONFIG", "cluster.toml"))
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("file", f"cannot read {p}: {e.strerror}", path=str(p)) from None
    return loads(text, path=str(p))
