"""CloudFront signed URLs and signed cookies, in CloudFront's own format. Sans-IO.

A distribution (or one of its cache behaviours) may demand that every request proves it was
granted access by whoever holds a private key whose public half is trusted (``[[cdn.keys]]``).
The proof travels as query parameters (a *signed URL*) or as cookies (*signed cookies*, one grant
for many files: a DASH/HLS player fetching hundreds of segments). Both carry a *policy* — what
may be fetched, until when, from when, from where — and an RSA signature over it.

Wire format (CloudFront developer guide, "Use signed URLs" / "Use signed cookies")
-----------------------------------------------------------------------------------
Query parameters: canned policy ``Expires``, ``Signature``, ``Key-Pair-Id``; custom policy
``Policy``, ``Signature``, ``Key-Pair-Id``; both optionally ``Hash-Algorithm=SHA256`` (SHA1 when
absent). Cookies: ``CloudFront-Expires`` or ``CloudFront-Policy``, plus ``CloudFront-Signature``,
``CloudFront-Key-Pair-Id`` and optionally ``CloudFront-Hash-Algorithm``. When a request carries a
signed URL, the cookies are not looked at (CloudFront decides on the URL alone).

* The signature is RSA PKCS#1 v1.5 over the policy JSON bytes, with SHA-1 (or SHA-256).
* A canned policy is not sent: the verifier rebuilds it from the request URL and ``Expires`` as
  ``{"Statement":[{"Resource":"URL","Condition":{"DateLessThan":{"AWS:EpochTime":N}}}]}`` —
  the exact bytes ``botocore.signers.CloudFrontSigner.build_policy`` produces — where URL is
  ``scheme://host/path?query`` with the signing parameters removed (and no ``?`` when nothing is
  left). So the path, the host and every other query parameter are covered by the signature.
* A custom policy is sent base64-encoded; its ``Resource`` may hold ``*`` (any run of characters)
  and ``?`` (one character) wildcards and is matched against that same URL; ``DateLessThan`` is
  required, ``DateGreaterThan`` and ``IpAddress.AWS:SourceIp`` (a CIDR) are optional.
* Base64 uses CloudFront's URL-safe substitutions ``+``→``-``, ``=``→``_``, ``/``→``~``.

Strictness: only one statement; unknown keys or wrongly typed values make the policy malformed
(fail closed); base64 must be canonical (the unused low bits of the last character zero, the
padding present), so no two spellings of one signature exist — any change to a byte of the URL
fails. Checks run in a fixed order and the first failure is the answer: missing → malformed →
unknown key → bad signature → expired → not yet valid → IP not allowed → resource mismatch. The
signature is checked before the policy's conditions so an unauthenticated client learns nothing
about a policy it did not sign. Every failure is a :class:`Denial` (a 403 with a clear body).

Cost per request: one RSA public-key operation (e = 65537: ~120 µs of pycryptodome for a 2048-bit
key here) the first time a worker sees a signature, then a SHA-256 over it and the policy
(:class:`Verifier` remembers signatures that held), after parsing bounded by :data:`MAX_POLICY_CHARS`; the wildcard match runs only once the
policy's signature holds, so its pattern is the operator's, not an attacker's.

The verdict's ``target`` is the request target with the signing parameters removed: that is what
goes into the cache key and to the next tier, so one cached object serves every signed URL for it
and no tier behind the POP ever sees a signature. :func:`strip_signing_cookies` does the same for
a ``Cookie`` header.

Signing (for ``headwater cdn sign``): :func:`sign_url` and :func:`sign_cookies` make the same
format with a private key; URLs made by botocore's ``CloudFrontSigner`` and ours verify both ways.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import ipaddress
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from headwater.config import Reader

if TYPE_CHECKING:
    from Crypto.PublicKey import RSA

__all__ = [
    "Denial",
    "Access",
    "AUTO",
    "KEY_ID_PATTERN",
    "SigningKey",
    "auto_key_file",
    "SigningKeys",
    "Verifier",
    "canned_policy",
    "custom_policy",
    "sign_url",
    "sign_cookies",
    "sign_with_key",
    "parse_expiry",
    "strip_signing_params",
    "strip_signing_cookies",
    "resource_matches",
    "cf_b64encode",
    "cf_b64decode",
    "load_public_key",
    "load_private_key",
    "read_signing_keys",
    "SIGNING_PARAMS",
    "SIGNING_COOKIES",
    "MAX_POLICY_CHARS",
]

SIGNING_PARAMS = ("Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm")
SIGNING_COOKIES = ("CloudFront-Expires", "CloudFront-Policy", "CloudFront-Signature",
                   "CloudFront-Key-Pair-Id", "CloudFront-Hash-Algorithm")
_PARAM_SET = frozenset(SIGNING_PARAMS)
_COOKIE_SET = frozenset(SIGNING_COOKIES)

# A base64 policy longer than this is refused before it is decoded (CloudFront caps a whole URL
# at 8,192 bytes; a real custom policy is a few hundred).
MAX_POLICY_CHARS = 8192
# RSA signatures up to 8192-bit keys (1,024 bytes, 1,368 base64 characters).
_MAX_SIGNATURE_CHARS = 1368
_MAX_KEY_ID_CHARS = 128
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_\-]{1,128}")
#: ``private_key_file = "auto"``: the key lives in the data_dir, made on first start.
AUTO = "auto"
_EPOCH = re.compile(r"[0-9]{1,12}")
_HASH_NAMES = ("SHA1", "SHA256")


@functools.lru_cache(maxsize=None)
def _digest(name: str) -> Any:
    """pycryptodome's hash module for ``name`` (imported on first use: see :func:`_pkcs1`)."""
    from Crypto.Hash import SHA1, SHA256

    return {"SHA1": SHA1, "SHA256": SHA256}[name]


@functools.lru_cache(maxsize=None)
def _pkcs1() -> Any:
    # pycryptodome is imported when a key is loaded or a signature checked, not when the edge's
    # configuration is read: every headwater command reads it, and pycryptodome's first import
    # costs a tenth of a second of CPU.
    from Crypto.Signature import pkcs1_15

    return pkcs1_15

_TO_STD = bytes.maketrans(b"-_~", b"+=/")
_TO_CF = bytes.maketrans(b"+=/", b"-_~")


class Denial(enum.Enum):
    """Why a request was refused: ``value`` is the reason code (logs, metrics, the 403 body)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown-key"
    BAD_SIGNATURE = "bad-signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    IP_NOT_ALLOWED = "ip-not-allowed"
    RESOURCE_MISMATCH = "resource-mismatch"

    @property
    def message(self) -> str:
        """One sentence for the 403 body, saying what the client must fix."""
        return _MESSAGES[self]

    @property
    def http_status(self) -> int:
        return 403

    def body(self) -> bytes:
        """The 403 response body: the reason code and its sentence, plain text."""
        return f"403 Forbidden: {self.value}: {self.message}\n".encode()


_MESSAGES = {
    Denial.MISSING: "this content needs a signed URL or signed cookies, and the request has neither",
    Denial.MALFORMED: "the signed URL or signed cookies are incomplete or not in CloudFront's format",
    Denial.UNKNOWN_KEY: "the Key-Pair-Id names no key this distribution trusts",
    Denial.BAD_SIGNATURE: "the signature does not match the policy (the URL was altered or signed with another key)",
    Denial.EXPIRED: "the signed URL or cookie has expired",
    Denial.NOT_YET_VALID: "the signed URL or cookie is not valid yet (DateGreaterThan is in the future)",
    Denial.IP_NOT_ALLOWED: "the policy does not allow requests from this client address",
    Denial.RESOURCE_MISMATCH: "the policy does not grant access to this URL",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Access:
    """The verdict on one request.

    ``allowed`` with ``denial`` None, or refused with the :class:`Denial`. ``target`` is the
    request target without the signing query parameters (use it for the cache key and upstream,
    whatever the verdict). ``via`` says what carried the grant: "url", "cookie" or "" (missing).
    ``key_id`` and ``expires`` are set once they could be read (for the access log).
    """

    allowed: bool
    denial: Denial | None
    target: str
    via: str = ""
    key_id: str = ""
    expires: int | None = None


# --- keys ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    """One ``[[cdn.keys]]`` entry: a key-pair id and its public key (PEM); the private key's PEM
    only where this host signs URLs (``headwater cdn sign``)."""

    id: str
    public_key_pem: bytes | None
    private_key_pem: bytes | None = None
    #: ``private_key_file = "auto"``: the key's file in the cluster's data_dir, made by
    #: ``headwater up`` on first start (:mod:`.cdnkeys`); both PEMs are None until it exists.
    auto_file: Path | None = None

    @property
    def missing(self) -> bool:
        """An ``auto`` key whose file is not made yet: it verifies and signs nothing."""
        return self.public_key_pem is None


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKeys:
    """Every trusted key, by id (``[[cdn.keys]]``)."""

    keys: tuple[SigningKey, ...] = ()

    def get(self, key_id: str) -> SigningKey | None:
        for k in self.keys:
            if k.id == key_id:
                return k
        return None

    def ids(self) -> tuple[str, ...]:
        return tuple(k.id for k in self.keys)


def load_public_key(pem: bytes) -> RSA.RsaKey:
    """An RSA public key from PEM (SubjectPublicKeyInfo or PKCS#1); a private key's public half."""
    from Crypto.PublicKey import RSA

    key = RSA.import_key(pem)
    return key.public_key()


def load_private_key(pem: bytes) -> RSA.RsaKey:
    """An RSA private key from PEM (PKCS#1 or PKCS#8, unencrypted)."""
    from Crypto.PublicKey import RSA

    key = RSA.import_key(pem)
    if not key.has_private():
        raise ValueError("the PEM holds a public key, not a private key")
    return key


def read_signing_keys(r: Reader, entries: Any, prefix: str = "cdn.keys") -> SigningKeys:
    """``[[cdn.keys]]``: ``id`` (the Key-Pair-Id), ``public_key_file`` and optionally
    ``private_key_file`` (relative paths resolve against cluster.toml's folder). Each file is read
    and parsed now, so a bad key stops the cluster before anything starts.

    ``private_key_file = "auto"`` (and no ``public_key_file``): the pair is one owner-only file,
    :func:`auto_key_file`, that ``headwater up`` makes on first start; until then the entry is
    :attr:`SigningKey.missing` (it signs nothing and nothing signed with it is accepted)."""
    if entries is None:
        return SigningKeys()
    if not isinstance(entries, list):
        raise r.error(prefix, "expected an array of tables ([[cdn.keys]])")
    keys: list[SigningKey] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{prefix}[{i}]"
        if not isinstance(entry, dict):
            raise r.error(prefix, "expected an array of tables ([[cdn.keys]])")
        r.check_keys(entry, prefix, {"id", "public_key_file", "private_key_file"})
        key_id = r.get(entry, "id", prefix, str, required=True)
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise r.error(f"{prefix}.id", f"{key_id!r} is not a key-pair id (letters, digits, _ -)")
        if key_id in seen:
            raise r.error(f"{prefix}.id", f"key-pair id {key_id!r} appears twice")
        seen.add(key_id)
        if entry.get("private_key_file") == AUTO:
            keys.append(_read_auto_key(r, entry, key_id, where, prefix))
            continue
        pub_pem = _read_key_file(r, entry, "public_key_file", prefix, required=True)
        assert pub_pem is not None
        try:
            pub = load_public_key(pub_pem)
        except (ValueError, IndexError, TypeError) as e:
            raise r.error(f"{prefix}.public_key_file", f"{where}: not an RSA key in PEM: {e}") from None
        priv_pem = _read_key_file(r, entry, "private_key_file", prefix, required=False)
        if priv_pem is not None:
            try:
                priv = load_private_key(priv_pem)
            except (ValueError, IndexError, TypeError) as e:
                raise r.error(f"{prefix}.private_key_file", f"{where}: not an RSA private key in PEM: {e}") from None
            if priv.public_key() != pub:
                raise r.error(f"{prefix}.private_key_file",
                              f"{where}: this private key is not the pair of public_key_file")
        keys.append(SigningKey(id=key_id, public_key_pem=pub_pem, private_key_pem=priv_pem))
    return SigningKeys(keys=tuple(keys))


def auto_key_file(data_dir: Path, key_id: str) -> Path:
    """Where ``private_key_file = "auto"`` keeps key ``key_id``: ``data_dir/cdn/<id>.pem``."""
    return data_dir / "cdn" / f"{key_id}.pem"


def _read_auto_key(r: Reader, entry: Mapping[str, Any], key_id: str, where: str, prefix: str) -> SigningKey:
    # One file holds the pair (the public half is derived), so two hosts or two starts can never
    # end up with halves of different pairs.
    if "public_key_file" in entry:
        raise r.error(f"{prefix}.public_key_file",
                      f'{where}: private_key_file = "auto" keeps the pair in one file: drop public_key_file')
    file = auto_key_file(r.data_dir, key_id)
    try:
        with open(file, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(64 * 1024 + 1)
    except FileNotFoundError:
        return SigningKey(id=key_id, public_key_pem=None, auto_file=file)
    except OSError as e:
        raise r.error(f"{prefix}.private_key_file", f"cannot read {file}: {e.strerror}") from None
    if mode & 0o077:
        # As ssh refuses a private key others can read: whoever reads it can sign any URL.
        raise r.error(f"{prefix}.private_key_file",
                      f"{file} is readable by others (mode {mode & 0o777:o}): chmod 600 it")
    try:
        priv = load_private_key(data)
    except (ValueError, IndexError, TypeError) as e:
        raise r.error(f"{prefix}.private_key_file", f"{where}: {file} is not an RSA private key in PEM: {e}") from None
    return SigningKey(id=key_id, public_key_pem=priv.public_key().export_key("PEM"), private_key_pem=data,
                      auto_file=file)


def _read_key_file(r: Reader, entry: Mapping[str, Any], name: str, prefix: str, *,
                   required: bool) -> bytes | None:
    raw = r.get(entry, name, prefix, str, None if not required else ..., required=required)
    if raw is None:
        return None
    file = Path(raw).expanduser()
    if not file.is_absolute():
        file = r.root / file
    try:
        with open(file, "rb") as f:
            data = f.read(64 * 1024 + 1)
    except OSError as e:
        raise r.error(f"{prefix}.{name}", f"cannot read {file}: {e.strerror}") from None
    if len(data) > 64 * 1024:
        raise r.error(f"{prefix}.{name}", f"{file} is larger than a PEM key can be")
    return data


# --- encoding ------------------------------------------------------------------------------------

def cf_b64encode(data: bytes) -> str:
    """Base64 in CloudFront's URL-safe alphabet (``+``→``-``, ``=``→``_``, ``/``→``~``)."""
    return base64.b64encode(data).translate(_TO_CF).decode("ascii")


def cf_b64decode(text: str) -> bytes:
    """Decode CloudFront base64; ValueError unless ``text`` is the one canonical spelling."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("not ASCII") from None
    if len(raw) % 4:
        raise ValueError("length is not a multiple of 4")
    if raw.translate(None, b"+=/") != raw:
        # Standard base64's + = / would be a second spelling of the same bytes.
        raise ValueError("uses + = / instead of CloudFront's - _ ~")
    std = raw.translate(_TO_STD)
    try:
        data = base64.b64decode(std, validate=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from None
    # b64decode ignores the unused low bits of the last character: re-encoding catches a second
    # spelling of the same bytes.
    if base64.b64encode(data) != std:
        raise ValueError("not canonical base64")
    return data


# --- policies ------------------------------------------------------------------------------------

def canned_policy(resource: str, expires: int) -> bytes:
    """The canned policy's bytes, as CloudFront (and botocore) build them."""
    return json.dumps({"Statement": [{"Resource": resource,
                                      "Condition": {"DateLessThan": {"AWS:EpochTime": int(expires)}}}]},
                      separators=(",", ":")).encode()


def custom_policy(resource: str | None, expires: int, *, starts: int | None = None,
                  ip_range: str | None = None) -> bytes:
    """A custom policy's bytes, keys in botocore's order (DateLessThan, IpAddress, DateGreaterThan).

    ``resource`` may hold ``*`` and ``?`` wildcards; None grants every URL. ``ip_range`` is an
    address or a CIDR (an address alone means /32, as botocore does).
    """
    condition: dict[str, Any] = {"DateLessThan": {"AWS:EpochTime": int(expires)}}
    if ip_range:
        if "/" not in ip_range:
            ip_range += "/128" if ":" in ip_range else "/32"
        ipaddress.ip_network(ip_range, strict=False)  # ValueError for nonsense, before signing
        condition["IpAddress"] = {"AWS:SourceIp": ip_range}
    if starts is not None:
        condition["DateGreaterThan"] = {"AWS:EpochTime": int(starts)}
    statement: dict[str, Any] = {}
    if resource is not None:
        statement["Resource"] = resource
    statement["Condition"] = condition
    return json.dumps({"Statement": [statement]}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class _Policy:
    resource: str | None
    expires: int
    starts: int | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None


def _epoch(cond: Mapping[str, Any], name: str) -> int | None:
    if name not in cond:
        return None
    inner = cond[name]
    if not isinstance(inner, dict) or set(inner) != {"AWS:EpochTime"}:
        raise ValueError(f"{name} must be {{\"AWS:EpochTime\": N}}")
    value = inner["AWS:EpochTime"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _parse_policy(raw: bytes) -> _Policy:
    """A custom policy's JSON, checked strictly; ValueError when it is not CloudFront's shape."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"policy is not JSON: {e}") from None
    if not isinstance(doc, dict) or set(doc) != {"Statement"}:
        raise ValueError("policy must be {\"Statement\": [...]}")
    statements = doc["Statement"]
    if not isinstance(statements, list) or len(statements) != 1 or not isinstance(statements[0], dict):
        raise ValueError("policy must hold exactly one statement")
    st = statements[0]
    if not set(st) <= {"Resource", "Condition"} or "Condition" not in st:
        raise ValueError("a statement has a Condition and optionally a Resource")
    resource = st.get("Resource")
    if resource is not None and not isinstance(resource, str):
        raise ValueError("Resource must be a string")
    cond = st["Condition"]
    if not isinstance(cond, dict) or not set(cond) <= {"DateLessThan", "DateGreaterThan", "IpAddress"}:
        raise ValueError("Condition allows DateLessThan, DateGreaterThan, IpAddress")
    expires = _epoch(cond, "DateLessThan")
    if expires is None:
        raise ValueError("DateLessThan is required")
    starts = _epoch(cond, "DateGreaterThan")
    network = None
    if "IpAddress" in cond:
        ip = cond["IpAddress"]
        if not isinstance(ip, dict) or set(ip) != {"AWS:SourceIp"} or not isinstance(ip["AWS:SourceIp"], str):
            raise ValueError("IpAddress must be {\"AWS:SourceIp\": \"CIDR\"}")
        network = ipaddress.ip_network(ip["AWS:SourceIp"], strict=False)
    return _Policy(resource, expires, starts, network)


def resource_matches(pattern: str, url: str) -> bool:
    """CloudFront's Resource match: ``*`` matches any run of characters, ``?`` exactly one.

    Iterative with one backtrack point (the last ``*``), so O(len(pattern) * len(url)) at worst
    and linear for the usual one trailing ``*``; no regex, no recursion.
    """
    p = u = 0
    star = -1
    mark = 0
    np, nu = len(pattern), len(url)
    while u < nu:
        if p < np and (pattern[p] == "?" or pattern[p] == url[u]):
            p += 1
            u += 1
        elif p < np and pattern[p] == "*":
            star = p
            mark = u
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            u = mark
        else:
            return False
    while p < np and pattern[p] == "*":
        p += 1
    return p == np


# --- stripping -----------------------------------------------------------------------------------

def _split_target(target: str) -> tuple[str, list[str]]:
    path, sep, query = target.partition("?")
    return path, (query.split("&") if sep else [])


def _param_name(part: str) -> str:
    return part.partition("=")[0]


def strip_signing_params(target: str) -> str:
    """``target`` without CloudFront's signing query parameters (others kept, in order)."""
    path, parts = _split_target(target)
    if not parts:
        return target
    kept = [p for p in parts if _param_name(p) not in _PARAM_SET]
    return f"{path}?{'&'.join(kept)}" if kept else path


def strip_signing_cookies(cookie_header: str) -> str | None:
    """A ``Cookie`` header value without the CloudFront-* signing cookies; None when none is left."""
    kept = [c.strip() for c in cookie_header.split(";")
            if c.strip() and c.strip().partition("=")[0].strip() not in _COOKIE_SET]
    return "; ".join(kept) if kept else None


def _signing_query(parts: list[str]) -> dict[str, str] | None:
    """The signing parameters among ``parts``; None if one appears twice (malformed)."""
    found: dict[str, str] = {}
    for part in parts:
        name, _, value = part.partition("=")
        if name in _PARAM_SET:
            if name in found:
                return None
            found[name] = value
    return found


def _signing_cookies(cookie_header: str | None) -> dict[str, str] | None:
    found: dict[str, str] = {}
    if not cookie_header:
        return found
    for item in cookie_header.split(";"):
        name, _, value = item.strip().partition("=")
        name = name.strip()
        if name in _COOKIE_SET:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if name in found and found[name] != value:
                return None  # two different values: refuse to guess which one
            found[name] = value
    return found


# --- verification --------------------------------------------------------------------------------

class Verifier:
    """Verifies signed URLs and signed cookies against the trusted public keys, by key-pair id.

    One per distribution (the keys it trusts), serving every request of a worker. ``verify``
    never raises on client input.

    A player sends one grant (the same policy and signature) with each of hundreds of segment
    requests, and the RSA check costs more than a small cache hit's whole path (~120 µs against
    45-70 µs, bench/README.md): so the digests of the last ``cache_entries`` (key id, hash,
    policy, signature) whose signature held are remembered and not checked again. Only the
    signature's outcome is remembered, and only when it held: the policy's conditions (expiry,
    start, IP, resource) are checked on every request, and a forged signature is checked (and
    refused) every time, so the cache holds nothing a client without a key can put there.
    ``signature_checks`` and ``signature_cache_hits`` count both paths.
    """

    def __init__(self, keys: SigningKeys | Mapping[str, bytes], *, cache_entries: int = 4096) -> None:
        # A key not made yet (``auto``) is unknown here: what it would sign is refused.
        pems = ({k.id: k.public_key_pem for k in keys.keys if k.public_key_pem is not None}
                if isinstance(keys, SigningKeys) else dict(keys))
        self._keys = {kid: load_public_key(pem) for kid, pem in pems.items()}
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._cache_entries = cache_entries
        self.signature_checks = 0
        self.signature_cache_hits = 0

    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(self, *, scheme: str, host: str, target: str, client_ip: str, now: float,
               cookie_header: str | None = None) -> Access:
        """The verdict for one request.

        ``scheme`` "http"/"https" and ``host`` (the Host header or :authority, as received) make
        the URL the policy names; ``target`` is the raw request target (path and query, as
        received); ``client_ip`` the viewer's address; ``now`` wall-clock epoch seconds.
        """
        path, parts = _split_target(target)
        stripped = strip_signing_params(target)
        url = f"{scheme}://{host}{stripped}"
        query = _signing_query(parts)
        if query is None:
            return Access(allowed=False, denial=Denial.MALFORMED, target=stripped, via="url")
        if query:
            fields = {"expires": query.get("Expires"), "policy": query.get("Policy"),
                      "signature": query.get("Signature"), "key_id": query.get("Key-Pair-Id"),
                      "hash": query.get("Hash-Algorithm")}
            via = "url"
        else:
            cookies = _signing_cookies(cookie_header)
            if cookies is None:
                return Access(allowed=False, denial=Denial.MALFORMED, target=stripped, via="cookie")
            if not cookies:
                return Access(allowed=False, denial=Denial.MISSING, target=stripped)
            fields = {"expires": cookies.get("CloudFront-Expires"),
                      "policy": cookies.get("CloudFront-Policy"),
                      "signature": cookies.get("CloudFront-Signature"),
                      "key_id": cookies.get("CloudFront-Key-Pair-Id"),
                      "hash": cookies.get("CloudFront-Hash-Algorithm")}
            via = "cookie"
        return self._check(fields, url=url, stripped=stripped, via=via, client_ip=client_ip, now=now)

    def _check(self, f: Mapping[str, str | None], *, url: str, stripped: str, via: str,
               client_ip: str, now: float) -> Access:
        def deny(d: Denial, key_id: str = "", expires: int | None = None) -> Access:
            return Access(allowed=False, denial=d, target=stripped, via=via, key_id=key_id,
                          expires=expires)

        expires_s, policy_s, sig_s, key_id, hash_name = (
            f["expires"], f["policy"], f["signature"], f["key_id"], f["hash"])
        # Exactly one of Expires (canned) and Policy (custom), plus a signature and a key id.
        if (expires_s is None) == (policy_s is None) or not sig_s or not key_id:
            return deny(Denial.MALFORMED)
        if len(key_id) > _MAX_KEY_ID_CHARS or not KEY_ID_PATTERN.fullmatch(key_id):
            return deny(Denial.MALFORMED)
        hash_name = hash_name if hash_name is not None else "SHA1"
        if hash_name not in _HASH_NAMES or len(sig_s) > _MAX_SIGNATURE_CHARS:
            return deny(Denial.MALFORMED, key_id)
        try:
            signature = cf_b64decode(sig_s)
        except ValueError:
            return deny(Denial.MALFORMED, key_id)
        if expires_s is not None:
            if not _EPOCH.fullmatch(expires_s):
                return deny(Denial.MALFORMED, key_id)
            policy = _Policy(url, int(expires_s), None, None)
            policy_bytes = canned_policy(url, policy.expires)
        else:
            assert policy_s is not None
            if len(policy_s) > MAX_POLICY_CHARS:
                return deny(Denial.MALFORMED, key_id)
            try:
                policy_bytes = cf_b64decode(policy_s)
                policy = _parse_policy(policy_bytes)
            except ValueError:
                return deny(Denial.MALFORMED, key_id)
        key = self._keys.get(key_id)
        if key is None:
            return deny(Denial.UNKNOWN_KEY, key_id, policy.expires)
        seen = hashlib.sha256(b"\0".join((key_id.encode(), hash_name.encode(), signature, policy_bytes))).digest()
        if seen in self._verified:
            self._verified.move_to_end(seen)
            self.signature_cache_hits += 1
        else:
            self.signature_checks += 1
            try:
                _pkcs1().new(key).verify(_digest(hash_name).new(policy_bytes), signature)
            except (ValueError, TypeError):
                return deny(Denial.BAD_SIGNATURE, key_id, policy.expires)
            self._verified[seen] = None
            if len(self._verified) > self._cache_entries:
                self._verified.popitem(last=False)
        if now >= policy.expires:
            return deny(Denial.EXPIRED, key_id, policy.expires)
        if policy.starts is not None and now <= policy.starts:
            return deny(Denial.NOT_YET_VALID, key_id, policy.expires)
        if policy.network is not None and not _ip_in(client_ip, policy.network):
            return deny(Denial.IP_NOT_ALLOWED, key_id, policy.expires)
        # A canned policy's resource is the URL itself: the signature already proved the match.
        if expires_s is None and policy.resource is not None and not resource_matches(policy.resource, url):
            return deny(Denial.RESOURCE_MISMATCH, key_id, policy.expires)
        return Access(allowed=True, denial=None, target=stripped, via=via, key_id=key_id,
                      expires=policy.expires)


def _ip_in(client_ip: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        addr = ipaddress.ip_address(client_ip.partition("%")[0])
    except ValueError:
        return False
    # A dual-stack listener reports IPv4 viewers as ::ffff:a.b.c.d: compare them as IPv4.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version == network.version and addr in network


# --- signing -------------------------------------------------------------------------------------

def _sign(policy: bytes, private_key: RSA.RsaKey, hash_algorithm: str) -> str:
    if hash_algorithm not in _HASH_NAMES:
        raise ValueError(f"hash algorithm {hash_algorithm!r} is not SHA1 or SHA256")
    return cf_b64encode(_pkcs1().new(private_key).sign(_digest(hash_algorithm).new(policy)))


def _wants_custom(url: str, resource: str | None, starts: int | None, ip_range: str | None) -> bool:
    return starts is not None or bool(ip_range) or (resource is not None and resource != url)


def sign_url(url: str, *, key_id: str, private_key: RSA.RsaKey, expires: int,
             starts: int | None = None, ip_range: str | None = None, resource: str | None = None,
             hash_algorithm: str = "SHA1") -> str:
    """``url`` signed: a canned policy when only ``expires`` is given, else a custom one.

    ``resource`` (with ``*``/``?`` wildcards) lets one policy cover many URLs; it defaults to
    ``url``. The parameters are appended in botocore's order (Expires or Policy, Signature,
    Key-Pair-Id), then ``Hash-Algorithm`` when it is not SHA1.
    """
    if _wants_custom(url, resource, starts, ip_range):
        policy = custom_policy(resource if resource is not None else url, expires,
                               starts=starts, ip_range=ip_range)
        params = [f"Policy={cf_b64encode(policy)}"]
    else:
        policy = canned_policy(url, expires)
        params = [f"Expires={int(expires)}"]
    params += [f"Signature={_sign(policy, private_key, hash_algorithm)}", f"Key-Pair-Id={key_id}"]
    if hash_algorithm != "SHA1":
        params.append(f"Hash-Algorithm={hash_algorithm}")
    return url + ("&" if "?" in url else "?") + "&".join(params)


def sign_cookies(resource: str, *, key_id: str, private_key: RSA.RsaKey, expires: int,
                 starts: int | None = None, ip_range: str | None = None,
                 hash_algorithm: str = "SHA1") -> dict[str, str]:
    """Signed cookies (name → value) granting ``resource``: a canned policy (CloudFront-Expires)
    when ``resource`` has no wildcard and only ``expires`` is given, else a custom policy."""
    if starts is not None or ip_range or "*" in resource:
        policy = custom_policy(resource, expires, starts=starts, ip_range=ip_range)
        cookies = {"CloudFront-Policy": cf_b64encode(policy)}
    else:
        policy = canned_policy(resource, expires)
        cookies = {"CloudFront-Expires": str(int(expires))}
    cookies["CloudFront-Signature"] = _sign(policy, private_key, hash_algorithm)
    cookies["CloudFront-Key-Pair-Id"] = key_id
    if hash_algorithm != "SHA1":
        cookies["CloudFront-Hash-Algorithm"] = hash_algorithm
    return cookies


_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)?\s*")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, None: 1}


def parse_expiry(text: str, *, now: float) -> int:
    """``--expires`` for ``headwater cdn sign``: a duration from ``now`` ("90s", "15m", "1h", "7d",
    "1w", or bare seconds) or an absolute epoch ("@1767290400"); ValueError otherwise."""
    if text.startswith("@") and _EPOCH.fullmatch(text[1:]):
        return int(text[1:])
    m = _DURATION.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 1h, 7d, or @EPOCH")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds <= 0:
        raise ValueError("the expiry must be in the future")
    return int(now + seconds)


def sign_with_key(url: str, key: SigningKey, *, expires: int, starts: int | None = None,
                  ip_range: str | None = None, resource: str | None = None,
                  hash_algorithm: str = "SHA1") -> str:
    """:func:`sign_url` with a configured ``[[cdn.keys]]`` entry; ValueError naming the key when
    this host has no ``private_key_file`` for it."""
    if key.missing:
        raise ValueError(f"key {key.id}: {key.auto_file} is not made yet (`headwater up` makes it on first "
                         "start, or `headwater cdn keygen`)")
    if key.private_key_pem is None:
        raise ValueError(f"key {key.id} has no private_key_file here: cannot sign with it")
    return sign_url(url, key_id=key.id, private_key=load_private_key(key.private_key_pem), expires=expires,
                    starts=starts, ip_range=ip_range, resource=resource, hash_algorithm=hash_algorithm)
