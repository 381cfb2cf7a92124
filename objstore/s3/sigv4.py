"""AWS Signature Version 4 verification for S3, sans-IO.

:func:`authenticate` checks an ``Authorization: AWS4-HMAC-SHA256 ...`` header or a presigned URL
(``X-Amz-Signature`` in the query) and returns an :class:`AuthResult` with what the body checks
need: the payload mode (``x-amz-content-sha256``), the signing key and seed signature for
``aws-chunked`` chunk signatures (see :mod:`.chunked`).

Canonical URI: S3 signs the path URI-encoded once, without normalising dot segments. Clients
differ in which bytes they leave unescaped on the wire (botocore escapes everything but
``-_.~/``; some leave ``=`` or ``@`` bare), so the verifier first tries the RFC 3986 form of the
path (decode once, encode every byte but the unreserved ones and ``/``), then the path exactly as
received. That accepts both kinds of client without ever decoding twice.

Canonical query: each name and value decoded once and re-encoded (unreserved kept), sorted by
encoded name then value; ``+`` is read as a space (S3 decodes it so) and, failing that, as a
literal ``+``.
"""

from __future__ import annotations

import calendar
import datetime
import enum
import functools
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable
from urllib.parse import quote, unquote_to_bytes

from headwater.http.types import Headers

from ..config import User
from . import names
from .errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidRequest,
    NotImplemented,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
    XAmzContentSHA256Mismatch,
)

__all__ = [
    "ALGORITHM", "UNSIGNED_PAYLOAD", "STREAMING_SIGNED", "STREAMING_SIGNED_TRAILER",
    "STREAMING_UNSIGNED_TRAILER", "EMPTY_SHA256", "MAX_PRESIGN_EXPIRES_S",
    "PayloadMode", "payload_mode", "AuthResult", "authenticate", "has_query_auth", "PayloadVerifier",
    "signing_key", "sign", "canonical_uri", "canonical_query", "canonical_headers",
    "canonical_request", "string_to_sign", "wire_bytes", "parse_amz_date", "format_amz_date",
    "hoisted_headers",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
SERVICE = "s3"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_UNRESERVED = "-_.~"


class PayloadMode(enum.Enum):
    """How the body is protected, from the ``x-amz-content-sha256`` value."""

    UNSIGNED = UNSIGNED_PAYLOAD
    SHA256 = "sha256"                       # a hex digest the body must hash to
    STREAMING_SIGNED = STREAMING_SIGNED
    STREAMING_SIGNED_TRAILER = STREAMING_SIGNED_TRAILER
    STREAMING_UNSIGNED_TRAILER = STREAMING_UNSIGNED_TRAILER

    @property
    def aws_chunked(self) -> bool:
        """The body is ``aws-chunked`` framed and must go through :class:`AwsChunkedDecoder`."""
        return self in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER,
                        PayloadMode.STREAMING_UNSIGNED_TRAILER)

    @property
    def signed_chunks(self) -> bool:
        return self in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)

    @property
    def has_trailer(self) -> bool:
        return self in (PayloadMode.STREAMING_SIGNED_TRAILER, PayloadMode.STREAMING_UNSIGNED_TRAILER)


def payload_mode(content_sha256: str) -> PayloadMode:
    """Classify an ``x-amz-content-sha256`` value; anything unknown is InvalidArgument."""
    if _HEX64.fullmatch(content_sha256):
        return PayloadMode.SHA256
    try:
        mode = PayloadMode(content_sha256)
    except ValueError:
        if content_sha256.startswith("STREAMING-AWS4-ECDSA"):
            raise NotImplemented("SigV4a streaming payloads are not supported") from None
        raise InvalidArgument("x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                              "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, or a valid sha256 value.",
                              ArgumentName="x-amz-content-sha256",
                              ArgumentValue=content_sha256) from None
    if mode is PayloadMode.SHA256:  # the literal word "sha256" is not a digest
        raise InvalidArgument("x-amz-content-sha256 must be a valid sha256 value.")
    return mode


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult:
    """An authenticated request: who sent it and what the body verifiers need."""

    user: User
    access_key: str
    signing_key: bytes
    seed_signature: str        # the request signature; the first chunk signature chains from it
    amz_date: str              # 20130524T000000Z
    scope: str                 # 20130524/us-east-1/s3/aws4_request
    content_sha256: str        # x-amz-content-sha256 as sent (UNSIGNED-PAYLOAD for presigned URLs)
    presigned: bool = False
    signed_headers: tuple[str, ...] = ()

    @property
    def mode(self) -> PayloadMode:
        return payload_mode(self.content_sha256)


# --- primitives --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def signing_key(secret_key: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request")."""
    k = hmac.digest(("AWS4" + secret_key).encode("utf-8"), date.encode("ascii"), "sha256")
    k = hmac.digest(k, region.encode("utf-8"), "sha256")
    k = hmac.digest(k, service.encode("utf-8"), "sha256")
    return hmac.digest(k, b"aws4_request", "sha256")


def sign(key: bytes, string_to_sign: str) -> str:
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def canonical_uri(raw_path: str) -> str:
    """The RFC 3986 form of a raw path: decoded once, every byte but unreserved and ``/`` escaped."""
    if not raw_path:
        return "/"
    return quote(unquote_to_bytes(raw_path), safe="/" + _UNRESERVED)


def _query_pairs(raw_query: str, *, plus_is_space: bool) -> list[tuple[str, str]]:
    pairs = []
    for piece in raw_query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        if plus_is_space:
            name, value = name.replace("+", " "), value.replace("+", " ")
        pairs.append((quote(unquote_to_bytes(name), safe=_UNRESERVED),
                      quote(unquote_to_bytes(value), safe=_UNRESERVED)))
    return pairs


def canonical_query(raw_query: str, *, exclude: str | None = None, plus_is_space: bool = True) -> str:
    """Sorted ``name=value`` pairs joined by ``&``; ``exclude`` drops one parameter by name."""
    pairs = _query_pairs(raw_query, plus_is_space=plus_is_space)
    if exclude is not None:
        pairs = [p for p in pairs if p[0] != exclude]
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


# The whitespace botocore collapses. Not str.split(): header values here are the wire's bytes
# decoded as latin-1, where a UTF-8 byte such as 0xA0 or 0x85 reads as Unicode whitespace.
_WS = " \t\n\r\x0b\x0c"
_WS_RUN = re.compile(f"[{_WS}]+")


def _trim(value: str) -> str:
    value = value.strip(_WS)
    # The usual value has nothing to collapse: printable (so no tab, CR, LF, VT, FF) and no two
    # spaces in a row. The regex only for the rest (three times the cost, per signed header).
    if value.isprintable() and "  " not in value:
        return value
    return _WS_RUN.sub(" ", value)


def wire_bytes(text: str) -> bytes:
    """The bytes a canonical string stands for: header values (and a raw path) hold the wire's
    bytes decoded as latin-1, so latin-1 gives those bytes back, e.g. the UTF-8 of a
    non-ASCII x-amz-meta-* value exactly as the client signed it. Text that cannot have come
    off the wire (a character past U+00FF) is UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def canonical_headers(headers: Headers, signed: list[str], *, host: str | None = None) -> str:
    """``name:value\\n`` for each signed header; repeated fields are joined with commas."""
    # One pass over the fields (not one per signed name): a request signs most of its fields.
    found: dict[str, list[str]] = dict.fromkeys(signed)  # type: ignore[arg-type]
    for name, value in headers:
        if name in found:
            values = found[name]
            if values is None:
                found[name] = [_trim(value)]
            else:
                values.append(_trim(value))
    lines = []
    for name in signed:
        values = found[name]
        if values is None:
            values = [_trim(host)] if name == "host" and host else []
        lines.append(f"{name}:{','.join(values)}\n")
    return "".join(lines)


def canonical_request(method: str, uri: str, query: str, canonical_hdrs: str,
                      signed_headers: str, payload_hash: str) -> str:
    return "\n".join((method, uri, query, canonical_hdrs, signed_headers, payload_hash))


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(wire_bytes(canonical)).hexdigest()))


def parse_amz_date(value: str) -> float:
    """``20130524T000000Z`` -> POSIX seconds; ValueError if malformed."""
    if not _AMZ_DATE.fullmatch(value):
        raise ValueError(value)
    second = int(value[13:15])
    if second > 59:
        # strptime's %S also takes the leap seconds 60 and 61: its answer for those.
        return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
    # Every signed request parses its date twice; the fields by position cost well under half of
    # strptime's, and datetime rejects the same out-of-range fields (month 13, 30 February).
    return float(calendar.timegm((int(value[0:4]), *_checked_fields(value), second)))


def _checked_fields(value: str) -> tuple[int, int, int, int]:
    month, day, hour, minute = int(value[4:6]), int(value[6:8]), int(value[9:11]), int(value[11:13])
    datetime.date(int(value[0:4]), month, day)  # ValueError for a day the month does not have
    if hour > 23 or minute > 59:
        raise ValueError(value)
    return month, day, hour, minute


def format_amz_date(ts: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))


# --- verification ------------------------------------------------------------------------------

def authenticate(*, method: str, raw_path: str, raw_query: str, headers: Headers,
                 lookup_user: Callable[[str], User | None], region: str | None, now: float,
                 max_skew_s: int = 900, host: str | None = None) -> AuthResult:
    """Verify the SigV4 signature of a request; raise an :class:`S3Error` subclass if it fails.

    ``raw_path`` / ``raw_query`` are exactly as received (still %-encoded). ``now`` is POSIX
    seconds (inject the clock). ``region=None`` accepts whatever region the client signed for.
    ``host`` stands in for a missing Host header (HTTP/2 ``:authority``). An anonymous request
    raises AccessDenied.
    """
    authz = headers.get("authorization")
    query_auth = has_query_auth(raw_query)
    if authz is not None and query_auth:
        raise InvalidArgument("Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                              "parameter or the Authorization header should be specified",
                              ArgumentName="Authorization", ArgumentValue=authz)
    if authz is not None:
        return _header_auth(method, raw_path, raw_query, headers, authz, lookup_user, region, now,
                            max_skew_s, host)
    if query_auth:
        return _query_auth(method, raw_path, raw_query, headers, lookup_user, region, now,
                           max_skew_s, host)
    if "x-amz-algorithm=" in raw_query.lower() or "awsaccesskeyid=" in raw_query.lower():
        raise AuthorizationQueryParametersError(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
            "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
    raise AccessDenied("Anonymous access is not allowed")


def has_query_auth(raw_query: str) -> bool:
    """Whether the query carries SigV4 query-string authentication (a presigned URL)."""
    return "X-Amz-Signature=" in raw_query or "X-Amz-Credential=" in raw_query


_AUTH_PARTS = re.compile(r"\s*([A-Za-z]+)\s*=\s*([^,\s]*)\s*")


# What every SDK sends: the three components in this order, each once. A header of this shape
# parses to exactly what the general loop below makes of it (at a quarter of the cost).
_AUTH_USUAL = re.compile(r"AWS4-HMAC-SHA256 Credential=([^,\s]+), ?SignedHeaders=([^,\s]+), ?Signature=([^,\s]+)")


def _parse_authorization(authz: str) -> tuple[str, str, str]:
    usual = _AUTH_USUAL.fullmatch(authz)
    if usual is not None:
        return usual.group(1, 2, 3)  # type: ignore[return-value]
    algorithm, _, rest = authz.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm == "AWS":
            raise InvalidRequest("The authorization mechanism you have provided is not supported. "
                                 "Please use AWS4-HMAC-SHA256.")
        raise AuthorizationHeaderMalformed(
            f"The authorization header is malformed; the authorization mechanism {algorithm!r} is "
            "not supported. Please use AWS4-HMAC-SHA256.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        if not part.strip():
            continue
        m = _AUTH_PARTS.fullmatch(part)
        if not m or m.group(1) in fields:
            raise AuthorizationHeaderMalformed(
                f"The authorization header is malformed; the authorization component {part.strip()!r} is malformed.")
        fields[m.group(1)] = m.group(2)
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not fields.get(k)]
    if missing:
        raise AuthorizationHeaderMalformed(
            f"The authorization header is malformed; it is missing {', '.join(missing)}.")
    return fields["Credential"], fields["SignedHeaders"], fields["Signature"]


def _parse_credential(credential: str, err: type, amz_date: str, region: str | None) -> tuple[str, str, str]:
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not parts[0]:
        raise err("The authorization header is malformed; the Credential is mal-formed; "
                  "expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
    access_key, date, cred_region, service, terminal = parts
    if date != amz_date[:8]:
        raise err(f"The authorization header is malformed; Invalid credential date \"{date}\". "
                  "This date is not the same as X-Amz-Date: \"" + amz_date[:8] + "\".")
    if region is not None and cred_region != region:
        raise err(f"The authorization header is malformed; the region '{cred_region}' is wrong; "
                  f"expecting '{region}'", Region=region)
    if service != SERVICE:
        raise err(f"The authorization header is malformed; incorrect service \"{service}\". "
                  "This endpoint belongs to \"s3\".")
    if terminal != "aws4_request":
        raise err(f"The authorization header is malformed; incorrect terminal \"{terminal}\". "
                  "This endpoint uses \"aws4_request\".")
    return access_key, date, cred_region


def _request_date(headers: Headers) -> tuple[str, float]:
    """The request's date as signed (``x-amz-date``, else ``Date``) and as POSIX seconds."""
    value = headers.get("x-amz-date")
    if value is not None:
        value = value.strip()
        try:
            return value, parse_amz_date(value)
        except ValueError:
            raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header") from None
    value = headers.get("date")
    if value is not None:
        try:
            dt = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            dt = None
        if dt is not None:
            amz_date = format_amz_date(dt.timestamp())
            return amz_date, parse_amz_date(amz_date)
    raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")


def _check_skew(amz_date: str, ts: float, now: float, max_skew_s: int) -> None:
    """RequestTimeTooSkewed unless ``ts`` (``amz_date`` parsed) is within ``max_skew_s`` of now."""
    if abs(now - ts) > max_skew_s:
        raise RequestTimeTooSkewed(RequestTime=amz_date, ServerTime=_iso(now),
                                   MaxAllowedSkewMilliseconds=max_skew_s * 1000)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _signed_header_list(signed: str, err: type) -> list[str]:
    names = signed.split(";")
    if any(not n or n != n.lower().strip() for n in names):
        raise err("The authorization header is malformed; SignedHeaders is malformed.")
    if "host" not in names:
        raise err("The authorization header is malformed; the SignedHeaders must include host.")
    return names


# x-amz-* headers a presigned request may carry without signing them. S3 lets an unsigned
# x-amz-content-sha256 through; its value is then not used (the payload is UNSIGNED-PAYLOAD, see
# _query_auth), so it cannot switch the body to aws-chunked or to another digest.
PRESIGNED_UNSIGNED_OK = frozenset({"x-amz-content-sha256"})


def _refuse_unsigned(headers: Headers, signed: list[str], exempt: frozenset[str] = frozenset()) -> None:
    """AccessDenied naming every ``x-amz-*`` header the signature does not cover.

    A signature binds only the headers it lists; any other ``x-amz-*`` header would still steer
    the request (``x-amz-copy-source`` turns a PUT into a copy, ``x-amz-meta-*`` is stored), so
    S3 refuses them, for header-signed and presigned requests alike.
    """
    unsigned = sorted({k for k, _ in headers
                       if k.startswith("x-amz-") and k not in signed and k not in exempt})
    if unsigned:
        raise AccessDenied("There were headers present in the request which were not signed",
                           HeadersNotSigned=", ".join(unsigned))


def _verify(*, method: str, raw_path: str, raw_query: str, headers: Headers, signed: list[str],
            signed_str: str, payload_hash: str, amz_date: str, scope: str, key: bytes,
            signature: str, access_key: str, exclude: str | None, host: str | None) -> None:
    hdrs = canonical_headers(headers, signed, host=host)
    uris = [canonical_uri(raw_path)]
    if raw_path and raw_path != uris[0]:
        uris.append(raw_path)
    queries = [canonical_query(raw_query, exclude=exclude)]
    if "+" in raw_query:
        queries.append(canonical_query(raw_query, exclude=exclude, plus_is_space=False))
    first: tuple[str, str] | None = None
    for uri in uris:
        for query in queries:
            creq = canonical_request(method, uri, query, hdrs, signed_str, payload_hash)
            sts = string_to_sign(amz_date, scope, creq)
            if hmac.compare_digest(sign(key, sts), signature):
                return
            if first is None:
                first = (creq, sts)
    assert first is not None
    raise SignatureDoesNotMatch(AWSAccessKeyId=access_key, StringToSign=first[1],
                                SignatureProvided=signature, CanonicalRequest=first[0])


def _header_auth(method: str, raw_path: str, raw_query: str, headers: Headers, authz: str,
                 lookup_user: Callable[[str], User | None], region: str | None, now: float,
                 max_skew_s: int, host: str | None) -> AuthResult:
    credential, signed_str, signature = _parse_authorization(authz)
    amz_date, signed_at = _request_date(headers)
    access_key, date, cred_region = _parse_credential(credential, AuthorizationHeaderMalformed,
                                                      amz_date, region)
    signed = _signed_header_list(signed_str, AuthorizationHeaderMalformed)
    content_sha256 = headers.get("x-amz-content-sha256")
    if content_sha256 is None:
        raise InvalidRequest("Missing required header for this request: x-amz-content-sha256")
    content_sha256 = content_sha256.strip()
    payload_mode(content_sha256)
    if "x-amz-content-sha256" not in signed:
        raise AccessDenied("There were headers present in the request which were not signed",
                           HeadersNotSigned="x-amz-content-sha256")
    _refuse_unsigned(headers, signed)
    _check_skew(amz_date, signed_at, now, max_skew_s)
    user = lookup_user(access_key)
    if user is None:
        raise InvalidAccessKeyId(AWSAccessKeyId=access_key)
    scope = f"{date}/{cred_region}/{SERVICE}/aws4_request"
    key = signing_key(user.secret_key, date, cred_region)
    _verify(method=method, raw_path=raw_path, raw_query=raw_query, headers=headers, signed=signed,
            signed_str=signed_str, payload_hash=content_sha256, amz_date=amz_date, scope=scope,
            key=key, signature=signature, access_key=access_key, exclude=None, host=host)
    return AuthResult(user=user, access_key=access_key, signing_key=key, seed_signature=signature,
                      amz_date=amz_date, scope=scope, content_sha256=content_sha256,
                      presigned=False, signed_headers=tuple(signed))


# The query parameters of SigV4 query authentication (lower-case): never header fields.
_QUERY_AUTH_NAMES = frozenset(n.lower() for n in (
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date", "X-Amz-SignedHeaders",
    "X-Amz-Expires", "X-Amz-Security-Token"))


def hoisted_headers(raw_query: str, headers: Headers) -> tuple[tuple[str, str], ...]:
    """The ``x-amz-*`` header fields a SigV4 presigned URL carries as query parameters, as
    ``(lower-case name, value)`` to apply as headers, the way S3 applies them: presigners that
    hoist headers into the query (the AWS SDK for JavaScript v3's, for ``x-amz-tagging``,
    ``x-amz-meta-*``, ...) make such URLs, and the query, all of it signed, is their only carrier.
    Dropped, a presigned PUT's tags or metadata would be silently lost.

    Left out: the authentication parameters, ``x-amz-content-sha256`` (the payload's mode is
    the signature's business, settled from the headers) and a field also sent as a header (the
    header wins, as for SigV2). Values are the parameter's percent-decoded bytes read as
    latin-1, as header values are held. A value with a control character (CR, LF, NUL, ...) is
    InvalidArgument: no header can carry it, and stored it would make every answer unsendable.
    """
    out: list[tuple[str, str]] = []
    for piece in raw_query.split("&"):
        raw_name, _, value = piece.partition("=")
        name = unquote_to_bytes(raw_name).decode("latin-1").lower()
        if (not name.startswith("x-amz-") or name in _QUERY_AUTH_NAMES or name == "x-amz-content-sha256"
                or name in headers):
            continue
        text = unquote_to_bytes(value).decode("latin-1")
        names.refuse_bad_header_name(name)
        names.refuse_control_characters(name, text)
        out.append((name, text))
    return tuple(out)



def _query_params(raw_query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for piece in raw_query.split("&"):
        name, _, value = piece.partition("=")
        if name.startswith("X-Amz-"):
            params[name] = unquote_to_bytes(value).decode("utf-8", "replace")
    return params


def _query_auth(method: str, raw_path: str, raw_query: str, headers: Headers,
                lookup_user: Callable[[str], User | None], region: str | None, now: float,
                max_skew_s: int, host: str | None) -> AuthResult:
    p = _query_params(raw_query)
    required = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date",
                "X-Amz-SignedHeaders", "X-Amz-Expires")
    if any(not p.get(k) for k in required):
        raise AuthorizationQueryParametersError(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
            "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
    if p["X-Amz-Algorithm"] != ALGORITHM:
        raise AuthorizationQueryParametersError(
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    amz_date = p["X-Amz-Date"]
    try:
        ts = parse_amz_date(amz_date)
    except ValueError:
        raise AuthorizationQueryParametersError(
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"") from None
    try:
        expires = int(p["X-Amz-Expires"])
    except ValueError:
        raise AuthorizationQueryParametersError("X-Amz-Expires should be a number") from None
    if expires < 0:
        raise AuthorizationQueryParametersError("X-Amz-Expires must be non-negative")
    if expires > MAX_PRESIGN_EXPIRES_S:
        # S3's own wording
        raise AuthorizationQueryParametersError(
            "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires "
            "must be less than 604800 seconds")
    access_key, date, cred_region = _parse_credential(p["X-Amz-Credential"],
                                                      AuthorizationQueryParametersError,
                                                      amz_date, region)
    signed_str = p["X-Amz-SignedHeaders"]
    signed = _signed_header_list(signed_str, AuthorizationQueryParametersError)
    _refuse_unsigned(headers, signed, PRESIGNED_UNSIGNED_OK)
    # A URL dated ahead of this clock by more than the allowed skew is refused as S3 refuses a
    # URL used before its X-Amz-Date (403 AccessDenied, "Request is not yet valid").
    if ts - now > max_skew_s:
        raise AccessDenied("Request is not yet valid", **{"X-Amz-Date": amz_date,
                                                           "Expires": _iso(ts + expires),
                                                           "ServerTime": _iso(now)})
    if now > ts + expires:
        raise AccessDenied("Request has expired", **{"X-Amz-Expires": expires,
                                                      "Expires": _iso(ts + expires),
                                                      "ServerTime": _iso(now)})
    user = lookup_user(access_key)
    if user is None:
        raise InvalidAccessKeyId(AWSAccessKeyId=access_key)
    content_sha256 = UNSIGNED_PAYLOAD
    if "x-amz-content-sha256" in signed and headers.get("x-amz-content-sha256"):
        content_sha256 = headers["x-amz-content-sha256"].strip()
        payload_mode(content_sha256)
    scope = f"{date}/{cred_region}/{SERVICE}/aws4_request"
    key = signing_key(user.secret_key, date, cred_region)
    _verify(method=method, raw_path=raw_path, raw_query=raw_query, headers=headers, signed=signed,
            signed_str=signed_str, payload_hash=content_sha256, amz_date=amz_date, scope=scope,
            key=key, signature=p["X-Amz-Signature"], access_key=access_key,
            exclude="X-Amz-Signature", host=host)
    return AuthResult(user=user, access_key=access_key, signing_key=key,
                      seed_signature=p["X-Amz-Signature"], amz_date=amz_date, scope=scope,
                      content_sha256=content_sha256, presigned=True, signed_headers=tuple(signed))


# --- payload -----------------------------------------------------------------------------------

class PayloadVerifier:
    """Hashes a plain body as it streams in and checks it against ``x-amz-content-sha256``.

    ``update()`` each piece, then ``finish()``, which raises XAmzContentSHA256Mismatch.
    """

    __slots__ = ("expected", "_hash", "length")

    def __init__(self, expected_hex: str) -> None:
        self.expected = expected_hex.lower()
        self._hash = hashlib.sha256()
        self.length = 0

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.length += len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        got = self._hash.hexdigest()
        if not hmac.compare_digest(got, self.expected):
            raise XAmzContentSHA256Mismatch(ClientComputedContentSHA256=self.expected,
                                            S3ComputedContentSHA256=got)
