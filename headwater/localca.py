"""The cluster's local certificate authority: HTTPS on loopback without a public CA, as mkcert does.

A listener configured with ``tls_cert = "auto"`` and ``tls_key = "auto"`` serves a leaf
certificate issued here. On first start (``headwater up``, or the first daemon that needs it)
the cluster makes, in ``<data_dir>/ca/``:

``ca.pem``
    the CA certificate (ECDSA P-256, ten years): what clients trust (``curl --cacert``,
    ``SSL_CERT_FILE``, the system store; see the README). ``headwater ca path`` prints where it is.
``ca-key.sealed``
    the CA's private key and certificate, sealed (:mod:`headwater.sealed`: AES-256-GCM under the
    cluster secret, purpose ``local-ca``), mode 0600. A copied disk or backup alone cannot issue
    certificates that the machines trusting ``ca.pem`` would accept.
``tls.pem``, ``tls-key.pem``
    one leaf for every name the cluster's TLS listeners answer for (``localhost``, 127.0.0.1,
    ::1, each listener's host, the distributions' hostnames with their parent domain and its
    wildcard); the chain file holds the leaf then the CA (so a client that pins the CA's public
    key, as Chromium's ``--ignore-certificate-errors-spki-list`` does, sees it), the key is
    0600. Every start checks it and issues a new one when the names changed, the CA changed, the
    pair does not match, or less than ``renew_days`` of its validity are left.

The CA is *name constrained* (RFC 5280 section 4.2.1.10): it may certify only loopback and
private addresses, the special-use names of RFC 6761 and RFC 8375 (``localhost``, ``.test``,
``.example``, ``.invalid``, ``.home.arpa``) with ``.internal`` and ``.local``, and the domains
the cluster named when the CA was made. So trusting it cannot let anyone who steals its key
impersonate a public site. A name added later outside those subtrees is refused with a message
saying how to make a new CA.

Issuance takes an exclusive ``flock`` on ``ca/.lock``, so the workers of a daemon, and daemons
starting together, agree on one CA and one leaf. Files are published atomically (written,
fsynced, renamed).

This module is part of the kernel: it imports no daemon package. Time is injected (a
:class:`~headwater.clock.Clock`), so expiry and renewal are tested without waiting.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import os
import re
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .clock import SYSTEM_CLOCK, Clock
from .config import TLS_AUTO
from .sealed import Sealer, load_or_create

if TYPE_CHECKING:
    from .config import ClusterConfig

__all__ = [
    "CA_FOLDER",
    "CAInfo",
    "LeafFiles",
    "LocalCA",
    "LocalCAError",
    "TlsNames",
    "ca_folder",
    "client_ssl_context",
    "cluster_tls_names",
    "prepare",
    "read_ca_info",
    "read_leaf_names",
    "tls_context",
    "uses_local_ca",
]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The CA's folder under the cluster's data_dir.
CA_FOLDER = "ca"
#: The files in it (see the module's docstring).
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.sealed"
LEAF_CERT_FILE = "tls.pem"
LEAF_KEY_FILE = "tls-key.pem"
#: The purpose label the CA key is sealed under (a file sealed for another purpose never opens as this).
SEAL_PURPOSE = b"local-ca"
#: Names every leaf carries, whatever the config says: what a client on this machine types.
ALWAYS_NAMES = ("localhost", "127.0.0.1", "::1")

# What the CA may certify besides the names it was made for: special-use and local-only names and
# addresses, none of which a public CA can issue for.
_LOCAL_DOMAINS = ("localhost", "test", "example", "invalid", "home.arpa", "internal", "local")
_LOCAL_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                   "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10")

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_DAY = dt.timedelta(days=1)
# Backdating absorbs clocks a little behind ours (a client VM, a second host).
_BACKDATE = dt.timedelta(hours=1)


class LocalCAError(Exception):
    """The local CA cannot issue what is asked (a name outside its constraints, an expired CA,
    an unreadable file); the message says what to do."""


# --- names ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class TlsNames:
    """The subject alternative names of a leaf: DNS names (lower case, ``*.`` only as the whole
    leftmost label) and IP addresses, each sorted and unique."""

    dns: tuple[str, ...] = ()
    ips: tuple[IP, ...] = ()

    @classmethod
    def parse(cls, names: Iterable[str]) -> TlsNames:
        """Names as cluster.toml and the roles give them; an IP literal becomes an IP SAN.
        Raises :class:`LocalCAError` naming a name no certificate can carry."""
        dns: set[str] = set()
        ips: set[IP] = set()
        for raw in names:
            name = raw.strip().lower().rstrip(".")
            try:
                ips.add(ipaddress.ip_address(name.strip("[]")))
                continue
            except ValueError:
                pass
            labels = name.split(".")
            body = labels[1:] if labels[0] == "*" else labels
            if not body or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in body) \
                    or (labels[0] == "*" and len(body) < 2):
                raise LocalCAError(f"{raw!r} cannot be a certificate name (letters, digits and '-' in "
                                   "dot-separated labels, '*.' only in front of at least two labels)")
            dns.add(name)
        return cls(dns=tuple(sorted(dns)), ips=tuple(sorted(ips, key=lambda a: (a.version, int(a)))))

    def general_names(self) -> list[x509.GeneralName]:
        return [x509.DNSName(n) for n in self.dns] + [x509.IPAddress(a) for a in self.ips]

    def __str__(self) -> str:
        return ", ".join([*self.dns, *map(str, self.ips)])


def _names_of(cert: x509.Certificate) -> TlsNames:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return TlsNames()
    return TlsNames(dns=tuple(sorted(san.get_values_for_type(x509.DNSName))),
                    ips=tuple(sorted(san.get_values_for_type(x509.IPAddress), key=lambda a: (a.version, int(a)))))


def _permitted_subtrees(names: TlsNames) -> tuple[list[str], list[IPNet]]:
    """The CA's constraints: the local names and networks, plus the domains of ``names`` outside
    them (a name's parent domain when it has three labels or more, else the name itself), so the
    distributions' sibling hostnames added later still fit."""
    domains = list(_LOCAL_DOMAINS)
    nets: list[IPNet] = [ipaddress.ip_network(n) for n in _LOCAL_NETWORKS]
    for name in names.dns:
        base = name.removeprefix("*.")
        if _in_domains(base, domains):
            continue
        labels = base.split(".")
        domains.append(".".join(labels[1:]) if len(labels) >= 3 else base)
    for a in names.ips:
        if not any(a.version == n.version and a in n for n in nets):
            nets.append(ipaddress.ip_network(a))
    return domains, nets


def _in_domains(name: str, domains: Iterable[str]) -> bool:
    # RFC 5280: a dNSName constraint matches the domain itself and every name under it.
    base = name.removeprefix("*.")
    return any(base == d or base.endswith("." + d) for d in domains)


def _outside_constraints(ca: x509.Certificate, names: TlsNames) -> list[str]:
    """The names of ``names`` that ``ca``'s name constraints do not permit."""
    try:
        nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    permitted = list(nc.permitted_subtrees or [])
    domains = [g.value.lower() for g in permitted if isinstance(g, x509.DNSName)]
    nets = [g.value for g in permitted if isinstance(g, x509.IPAddress)]
    out = [n for n in names.dns if not _in_domains(n, domains)]
    out += [str(a) for a in names.ips if not any(a.version == n.version and a in n for n in nets)]
    return out


# --- results -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class CAInfo:
    """The local CA as clients see it."""

    cert_path: Path
    subject: str
    not_after: dt.datetime
    sha256: str  # the certificate's fingerprint, as browsers show it
    spki_sha256: str  # base64 SHA-256 of its public key (Chromium's --ignore-certificate-errors-spki-list)
    created: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LeafFiles:
    """The leaf a TLS listener loads: ``cert`` (leaf then CA, PEM) and ``key`` (PEM, 0600)."""

    cert: Path
    key: Path
    names: TlsNames
    not_after: dt.datetime
    issued: bool = False  # issued by this call (first start, or a reason to re-issue)


def _info(path: Path, cert: x509.Certificate, created: bool) -> CAInfo:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return CAInfo(cert_path=path, subject=cert.subject.rfc4514_string(), not_after=cert.not_valid_after_utc,
                  sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
                  spki_sha256=base64.b64encode(hashlib.sha256(spki).digest()).decode(), created=created)


# --- files ---------------------------------------------------------------------------------------

def _publish(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path`` atomically with ``mode`` from the moment it exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off a public certificate's 0644
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(1024 * 1024)  # a certificate chain or a key is a few KiB
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LocalCAError(f"cannot read {path}: {e.strerror}") from None


# --- the CA --------------------------------------------------------------------------------------

class LocalCA:
    """A CA kept in ``folder``, its key sealed by ``sealer``; issues the leaf for a set of names.

    ``label`` goes into the certificates' subjects (the cluster's name), so a trust store holding
    several clusters' CAs tells them apart.
    """

    def __init__(self, folder: Path, sealer: Sealer, *, label: str = "headwater", clock: Clock = SYSTEM_CLOCK,
                 ca_days: int = 3650, leaf_days: int = 397, renew_days: int = 30) -> None:
        if not 0 < renew_days < leaf_days:
            raise ValueError("renew_days must be positive and shorter than leaf_days")
        self.folder = Path(folder)
        self.sealer = sealer
        self.label = label
        self.clock = clock
        self.ca_days = ca_days
        self.leaf_days = leaf_days
        self.renew_days = renew_days

    @property
    def cert_path(self) -> Path:
        return self.folder / CA_CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.folder / CA_KEY_FILE

    @property
    def leaf_cert_path(self) -> Path:
        return self.folder / LEAF_CERT_FILE

    @property
    def leaf_key_path(self) -> Path:
        return self.folder / LEAF_KEY_FILE

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.time(), dt.timezone.utc)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # 0755: ca.pem is public, what clients are told to trust; the keys in it are 0600 files.
        self.folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def ensure(self, names: TlsNames) -> tuple[CAInfo, LeafFiles]:
        """The CA (made on first call) and a leaf for exactly ``names``, issued if the one on disk
        does not fit. Raises :class:`LocalCAError` or :class:`~headwater.sealed.SealedError`."""
        with self._locked():
            ca_cert, ca_key, created = self._ensure_ca(names)
            outside = _outside_constraints(ca_cert, names)
            if outside:
                raise LocalCAError(
                    f"the local CA {self.cert_path} may not certify {', '.join(outside)} (it was made for "
                    f"local names and the domains configured then); to make a new CA for them, remove "
                    f"{self.folder} and start again, then trust the new {self.cert_path.name}")
            leaf = self._current_leaf(ca_cert, names)
            if leaf is None:
                leaf = self._issue_leaf(ca_cert, ca_key, names)
            return _info(self.cert_path, ca_cert, created), leaf

    def _ensure_ca(self, names: TlsNames) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
        blob, created = load_or_create(self.key_path, self.sealer, SEAL_PURPOSE, lambda: self._make_ca(names))
        try:
            key = serialization.load_pem_private_key(blob, password=None)
            cert = x509.load_pem_x509_certificate(blob[blob.index(b"-----BEGIN CERTIFICATE-----"):])
        except ValueError:
            raise LocalCAError(f"{self.key_path} opened but holds no CA key and certificate") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise LocalCAError(f"{self.key_path} holds a {type(key).__name__}, not the CA's ECDSA key")
        if cert.not_valid_after_utc <= self._now() + self.renew_days * _DAY:
            raise LocalCAError(f"the local CA {self.cert_path} expires on {cert.not_valid_after_utc:%Y-%m-%d}; "
                               f"remove {self.folder} to make a new one, and trust the new CA instead")
        pem = cert.public_bytes(serialization.Encoding.PEM)
        if _read(self.cert_path) != pem:
            # ca.pem is derived from the sealed file: written on first start, restored if removed
            # or replaced, so what clients are told to trust is always the CA that signs.
            _publish(self.cert_path, pem, 0o644)
        return cert, key, created

    def _make_ca(self, names: TlsNames) -> bytes:
        now = self._now()
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "headwater local CA"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, self.label[:64] or "headwater"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"headwater {self.label[:32]} CA {now:%Y-%m-%d %H:%M}"),
        ])
        domains, nets = _permitted_subtrees(names)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - _BACKDATE).not_valid_after(now + self.ca_days * _DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .add_extension(x509.NameConstraints(
                    permitted_subtrees=[x509.DNSName(d) for d in domains] + [x509.IPAddress(n) for n in nets],
                    excluded_subtrees=None), critical=True)
                .sign(key, hashes.SHA256()))
        return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
                + cert.public_bytes(serialization.Encoding.PEM))

    # --- the leaf --------------------------------------------------------------------------------

    def _current_leaf(self, ca: x509.Certificate, names: TlsNames) -> LeafFiles | None:
        """The leaf on disk if it still serves: issued by ``ca``, for exactly ``names``, matching
        its key, valid now and for more than ``renew_days``; else None."""
        chain, key_pem = _read(self.leaf_cert_path), _read(self.leaf_key_path)
        if chain is None or key_pem is None:
            return None
        try:
            cert = x509.load_pem_x509_certificate(chain)
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return None
        now = self._now()
        if (_names_of(cert) != names or cert.not_valid_before_utc > now
                or cert.not_valid_after_utc <= now + self.renew_days * _DAY
                or key.public_key() != cert.public_key()
                or os.stat(self.leaf_key_path).st_mode & 0o077):
            return None
        return LeafFiles(cert=self.leaf_cert_path, key=self.leaf_key_path, names=names,
                         not_after=cert.not_valid_after_utc)

    def _issue_leaf(self, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: TlsNames) -> LeafFiles:
        if not names.dns and not names.ips:
            raise LocalCAError("a leaf certificate needs at least one name")
        now = self._now()
        not_after = min(now + self.leaf_days * _DAY, ca.not_valid_after_utc)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "headwater local certificate"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, self.label[:64] or "headwater")]))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - _BACKDATE).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName(names.general_names()), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        # Key first: a crash between the two leaves a pair that does not match, which the next
        # start's check catches and re-issues, never a certificate served with the wrong key.
        _publish(self.leaf_key_path, key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()), 0o600)
        _publish(self.leaf_cert_path, cert.public_bytes(serialization.Encoding.PEM)
                 + ca.public_bytes(serialization.Encoding.PEM), 0o644)
        return LeafFiles(cert=self.leaf_cert_path, key=self.leaf_key_path, names=names,
                         not_after=not_after, issued=True)


def read_ca_info(folder: Path) -> CAInfo | None:
    """The CA as ``folder/ca.pem`` shows it, without the cluster secret; None before the first start."""
    path = Path(folder) / CA_CERT_FILE
    data = _read(path)
    if data is None:
        return None
    try:
        return _info(path, x509.load_pem_x509_certificate(data), False)
    except ValueError:
        raise LocalCAError(f"{path} is not a PEM certificate") from None


def read_leaf_names(folder: Path) -> tuple[TlsNames, dt.datetime] | None:
    """The names and expiry of the leaf in ``folder``, if there is one (for ``headwater ca show``)."""
    data = _read(Path(folder) / LEAF_CERT_FILE)
    if data is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return None
    return _names_of(cert), cert.not_valid_after_utc


# --- the cluster's use of it ---------------------------------------------------------------------

def ca_folder(cfg: ClusterConfig) -> Path:
    """Where the cluster's local CA lives: ``<data_dir>/ca``."""
    return Path(cfg.data_dir) / CA_FOLDER


def uses_local_ca(cfg: ClusterConfig) -> bool:
    """Whether any daemon's TLS is ``"auto"``."""
    return any(getattr(d, "tls_cert", None) == TLS_AUTO for d in cfg.daemons())


def cluster_tls_names(cfg: ClusterConfig) -> TlsNames:
    """Every name the leaf carries: :data:`ALWAYS_NAMES`, the host of each daemon whose TLS is
    ``"auto"`` (unless it binds every address), and what each package's ``tls_names`` adds (the
    edge: its distributions' hostnames)."""
    from .roles import registry

    names: list[str] = list(ALWAYS_NAMES)
    for d in cfg.daemons():
        if getattr(d, "tls_cert", None) == TLS_AUTO and d.host not in ("", "0.0.0.0", "::"):
            names.append(d.host)
    for rs in registry().role_sets:
        if rs.tls_names is not None:
            names.extend(rs.tls_names(cfg))
    return TlsNames.parse(names)


def local_ca(cfg: ClusterConfig, *, clock: Clock = SYSTEM_CLOCK) -> LocalCA:
    """The cluster's CA object (its key opens with the cluster secret ``cfg`` names)."""
    return LocalCA(ca_folder(cfg), Sealer.from_config(cfg), label=cfg.name, clock=clock)


def prepare(cfg: ClusterConfig, *, clock: Clock = SYSTEM_CLOCK) -> tuple[CAInfo, LeafFiles] | None:
    """``headwater up``: the CA and the cluster's leaf before any daemon starts; None when no
    listener uses them."""
    if not uses_local_ca(cfg):
        return None
    return local_ca(cfg, clock=clock).ensure(cluster_tls_names(cfg))


def tls_context(cfg: ClusterConfig, cert: str | None, key: str | None, *,
                clock: Clock = SYSTEM_CLOCK) -> ssl.SSLContext | None:
    """A daemon's server SSLContext (ALPN h2, http/1.1) from its ``tls_cert``/``tls_key``: None
    without TLS, the local CA's leaf for ``"auto"`` (issued now if needed), else the files."""
    from .http.tls import server_ssl_context

    if cert is None:
        return None
    if cert == TLS_AUTO:
        leaf = local_ca(cfg, clock=clock).ensure(cluster_tls_names(cfg))[1]
        return server_ssl_context(leaf.cert, leaf.key)
    return server_ssl_context(cert, key)


def client_ssl_context(cfg: ClusterConfig) -> ssl.SSLContext | bool:
    """What a daemon's HTTPS client verifies servers with: the public CAs httpx trusts by default
    (certifi's bundle) plus this cluster's local CA once it exists, so a shield fetching from a
    gateway with ``tls_cert = "auto"`` verifies it as any other origin; ``True`` (httpx's default)
    when there is no local CA."""
    ca = ca_folder(cfg) / CA_CERT_FILE
    if not ca.exists():
        return True
    import certifi  # httpx's own trust store

    ctx = ssl.create_default_context(cafile=certifi.where())
    ctx.load_verify_locations(cafile=str(ca))
    return ctx
