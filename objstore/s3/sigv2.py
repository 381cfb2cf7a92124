"""AWS Signature Version 2 verification for S3, sans-IO.

S3 still accepts SigV2, and clients still send it: boto3's ``generate_presigned_url`` for S3
signs SigV2 unless told otherwise, and older tools sign every request with it. Two forms
(the S3 reference, "Signing and authenticating REST requests"):

- header: ``Authorization: AWS <AccessKeyId>:<Signature>``, the request dated by ``Date`` or
  ``x-amz-date`` and refused outside the clock-skew window (RequestTimeTooSkewed);
- query string (presigned): ``AWSAccessKeyId``, ``Signature`` and ``Expires`` (POSIX seconds)
  parameters; refused once ``Expires`` has passed (AccessDenied "Request has expired").

``Signature = Base64(HMAC-SHA1(secret, StringToSign))`` with::

    StringToSign = Verb \\n Content-MD5 \\n Content-Type \\n Date-or-Expires \\n
                   CanonicalizedAmzHeaders CanonicalizedResource

Header values are the wire's bytes (this server decodes them as latin-1), so they are signed as
those bytes: a client that sends UTF-8 metadata signs its UTF-8. The resource's path is the raw
request path as sent (%-escapes and all), after ``/bucket`` when the bucket was named by the
Host; sub-resources and response overrides follow, sorted, their values %-decoded.

Every ``x-amz-*`` header is part of the string to sign, so SigV2 has no unsigned x-amz-*
headers. A presigned URL may carry ``x-amz-*``, ``Content-Type`` and ``Content-MD5`` as query
parameters instead (boto3 puts them there): they are signed as if they were headers and are
returned in :attr:`SigV2Result.query_headers` for the caller to apply.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable
from urllib.parse import unquote

from headwater.http.types import Headers

from ..config import User
from .errors import AccessDenied, InvalidAccessKeyId, InvalidRequest, RequestTimeTooSkewed, SignatureDoesNotMatch
from .sigv4 import UNSIGNED_PAYLOAD, AuthResult, format_amz_date, payload_mode, wire_bytes

__all__ = ["SUBRESOURCES", "QUERY_AUTH_PARAMS", "SigV2Result", "has_query_auth", "canonical_resource",
           "canonical_amz_headers", "string_to_sign", "sign", "authenticate_header", "authenticate_query"]

# Query parameters that are part of the resource signed (the S3 reference's list, plus the ones
# botocore's HmacV1Auth signs for the operations added since).
SUBRESOURCES = frozenset({
    "accelerate", "acl", "analytics", "cors", "defaultObjectAcl", "delete", "inventory", "lifecycle",
    "location", "logging", "metrics", "notification", "object-lock", "partNumber", "policy",
    "replication", "requestPayment", "restore", "select", "select-type", "storageClass", "tagging",
    "torrent", "uploadId", "uploads", "versionId", "versioning", "versions", "website",
    "response-cache-control", "response-content-disposition", "response-content-encoding",
    "response-content-language", "response-content-type", "response-expires",
})
QUERY_AUTH_PARAMS = ("AWSAccessKeyId", "Signature", "Expires")
QUERY_AUTH_MESSAGE = "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters"


@dataclass(frozen=True, slots=True, kw_only=True)
class SigV2Result:
    """An authenticated SigV2 request, and the signed header fields its query carried."""

    auth: AuthResult
    query_headers: tuple[tuple[str, str], ...] = ()


_wire = wire_bytes  # header values and the raw path are signed as the bytes they arrived as


def _query_pieces(raw_query: str) -> list[tuple[str, str | None]]:
    """``(decoded name, raw value or None when there is no '=')`` for each query piece."""
    out: list[tuple[str, str | None]] = []
    for piece in raw_query.split("&"):
        if not piece:
            continue
        name, eq, value = piece.partition("=")
        out.append((unquote(name), value if eq else None))
    return out


def has_query_auth(raw_query: str) -> bool:
    """Whether the query carries SigV2 query-string authentication (any of its parameters)."""
    return any(name in QUERY_AUTH_PARAMS for name, _ in _query_pieces(raw_query))


def canonical_resource(raw_path: str, raw_query: str, *, host_bucket: str | None = None,
                       empty_as_bare: bool = False) -> bytes:
    """``[/bucket]`` + the raw path + ``?sub&sub=value`` for the sub-resources present, sorted by
    name, values %-decoded (as signers write them). ``host_bucket``: the bucket the Host named.
    ``empty_as_bare``: a sub-resource sent with an empty value (``uploads=``) is written as its
    bare name (``uploads``), as the reference words it ("its value if it has one")."""
    path = raw_path or "/"
    res = _wire((f"/{host_bucket}" if host_bucket else "") + path)
    subs = sorted(((name, value) for name, value in _query_pieces(raw_query) if name in SUBRESOURCES),
                  key=lambda p: p[0])
    if subs:
        res += b"?" + b"&".join(name.encode() + (b"=" + unquote(value).encode("utf-8")
                                                 if value is not None and not (empty_as_bare and not value) else b"")
                                for name, value in subs)
    return res


def _resources(raw_path: str, raw_query: str, host_bucket: str | None) -> list[bytes]:
    """The canonical resources a signer may have meant. A path-style bucket request is sent as
    ``/bucket`` but botocore signs ``/bucket/`` (S3 accepts both): the second is tried too. A
    sub-resource sent with an empty value (``?uploads=``, as Go's url.Values writes every
    parameter) is signed as ``uploads=`` by botocore but as a bare ``uploads`` by rclone's and
    MinIO's SigV2 signers (Go cannot tell the two forms apart): both are tried."""
    paths = [(raw_path, host_bucket)]
    if host_bucket is None and len(raw_path) > 1 and "/" not in raw_path[1:]:
        paths.append((raw_path + "/", None))
    empty_sub = any(name in SUBRESOURCES and value == "" for name, value in _query_pieces(raw_query))
    out = []
    for path, bucket in paths:
        out.append(canonical_resource(path, raw_query, host_bucket=bucket))
        if empty_sub:
            out.append(canonical_resource(path, raw_query, host_bucket=bucket, empty_as_bare=True))
    return out


def canonical_amz_headers(fields: list[tuple[str, str]]) -> bytes:
    """``name:v1,v2\\n`` for every ``x-amz-*`` field, names lower-case and sorted, values trimmed."""
    merged: dict[str, list[str]] = {}
    for name, value in fields:
        name = name.lower()
        if name.startswith("x-amz-"):
            # Folded lines were unfolded by the HTTP parser; whitespace round the value goes.
            merged.setdefault(name, []).append(value.strip())
    return b"".join(_wire(f"{name}:{','.join(merged[name])}\n") for name in sorted(merged))


def string_to_sign(*, method: str, content_md5: str, content_type: str, date: str,
                   amz_headers: bytes, resource: bytes) -> bytes:
    """The SigV2 StringToSign, as the bytes HMAC-SHA1 runs over."""
    head = "\n".join((method, content_md5.strip(), content_type.strip(), date.strip())) + "\n"
    return _wire(head) + amz_headers + resource


def sign(secret_key: str, sts: bytes) -> str:
    """Base64(HMAC-SHA1(secret, StringToSign))."""
    return base64.b64encode(hmac.digest(secret_key.encode("utf-8"), sts, hashlib.sha1)).decode("ascii")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _payload_hash(headers: Headers) -> str:
    """What the body is checked against. SigV2 signs no payload hash, but a digest in
    ``x-amz-content-sha256`` is signed (it is an x-amz-* header) and is checked. Streaming
    payloads with chunk signatures need a SigV4 signing key."""
    value = (headers.get("x-amz-content-sha256") or "").strip()
    if not value:
        return UNSIGNED_PAYLOAD
    if payload_mode(value).signed_chunks:
        raise InvalidRequest("Signed aws-chunked payloads require AWS Signature Version 4 "
                             "(AWS4-HMAC-SHA256).")
    return value


def _verify(secret_key: str, candidates: list[bytes], signature: str, access_key: str) -> None:
    """Pass if ``signature`` signs one of the strings (the first is the one reported)."""
    given = signature.encode("utf-8", "replace")
    for sts in candidates:
        if hmac.compare_digest(sign(secret_key, sts).encode(), given):
            return
    sts = candidates[0]
    raise SignatureDoesNotMatch(AWSAccessKeyId=access_key, StringToSign=sts.decode("latin-1"),
                                SignatureProvided=signature,
                                StringToSignBytes=" ".join(f"{b:02x}" for b in sts))


def _result(user: User, access_key: str, signature: str, date: float, headers: Headers, *,
            presigned: bool) -> AuthResult:
    # Every x-amz-* field is signed in SigV2. No signing key: SigV2 has no chunk signatures.
    amz = tuple(sorted({k for k, _ in headers if k.startswith("x-amz-")}))
    return AuthResult(user=user, access_key=access_key, signing_key=b"", seed_signature=signature,
                      amz_date=format_amz_date(date), scope="", content_sha256=_payload_hash(headers),
                      presigned=presigned, signed_headers=amz)


def _request_time(headers: Headers) -> tuple[str, float]:
    """(the date to sign, as sent; the request time): ``x-amz-date`` wins over ``Date``, and
    then the Date position of the string to sign is empty (the reference's rule)."""
    amz = headers.get("x-amz-date")
    raw = amz if amz is not None else headers.get("date")
    if raw is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        when = None
    if when is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    return ("" if amz is not None else raw), when.timestamp()


def authenticate_header(*, method: str, raw_path: str, raw_query: str, headers: Headers, authorization: str,
                        lookup_user: Callable[[str], User | None], now: float, max_skew_s: int = 900,
                        host_bucket: str | None = None) -> SigV2Result:
    """Verify ``Authorization: AWS <AccessKeyId>:<Signature>``; raise an S3 error if it fails."""
    credential = authorization.strip()[len("AWS "):].strip()
    access_key, sep, signature = credential.rpartition(":")
    if not sep or not access_key or not signature:
        raise InvalidRequest("The authorization header you provided is invalid; expected "
                             "\"AWS AWSAccessKeyId:Signature\".")
    date_field, when = _request_time(headers)
    if abs(now - when) > max_skew_s:
        raise RequestTimeTooSkewed(RequestTime=headers.get("x-amz-date") or headers.get("date"),
                                   ServerTime=_iso(now), MaxAllowedSkewMilliseconds=max_skew_s * 1000)
    user = lookup_user(access_key)
    if user is None:
        raise InvalidAccessKeyId(AWSAccessKeyId=access_key)
    fields = list(headers)
    md5, ctype = headers.get("content-md5") or "", headers.get("content-type") or ""
    amz_date = headers.get("x-amz-date")
    candidates = []
    for resource in _resources(raw_path, raw_query, host_bucket):
        candidates.append(string_to_sign(method=method, content_md5=md5, content_type=ctype, date=date_field,
                                         amz_headers=canonical_amz_headers(fields), resource=resource))
        if amz_date is not None:
            # The reference's own x-amz-date example signs that date in the Date position and
            # not among the x-amz-* headers; accepted too (the date is signed either way).
            candidates.append(string_to_sign(
                method=method, content_md5=md5, content_type=ctype, date=amz_date,
                amz_headers=canonical_amz_headers([(k, v) for k, v in fields if k != "x-amz-date"]),
                resource=resource))
    _verify(user.secret_key, candidates, signature, access_key)
    return SigV2Result(auth=_result(user, access_key, signature, when, headers, presigned=False))


def authenticate_query(*, method: str, raw_path: str, raw_query: str, headers: Headers,
                       lookup_user: Callable[[str], User | None], now: float,
                       host_bucket: str | None = None) -> SigV2Result:
    """Verify a SigV2 presigned request (``AWSAccessKeyId``, ``Signature``, ``Expires``)."""
    params: dict[str, str] = {}
    carried: list[tuple[str, str]] = []  # x-amz-*, content-type, content-md5 sent as parameters
    for name, value in _query_pieces(raw_query):
        text = unquote(value or "")
        if name in QUERY_AUTH_PARAMS:
            if name in params:
                raise AccessDenied(QUERY_AUTH_MESSAGE)
            params[name] = text
        elif name.lower().startswith("x-amz-") or name.lower() in ("content-type", "content-md5"):
            carried.append((name.lower(), text))
    if any(not params.get(k) for k in QUERY_AUTH_PARAMS):
        raise AccessDenied(QUERY_AUTH_MESSAGE)
    try:
        expires = int(params["Expires"])
    except ValueError:
        raise AccessDenied(f"Invalid date (should be seconds since epoch): {params['Expires']}") from None
    if now > expires:
        raise AccessDenied("Request has expired", Expires=_iso(expires), ServerTime=_iso(now))
    access_key = params["AWSAccessKeyId"]
    user = lookup_user(access_key)
    if user is None:
        raise InvalidAccessKeyId(AWSAccessKeyId=access_key)
    # A field sent as a header wins over the same one sent as a parameter; each is signed once.
    absent = [(k, v) for k, v in carried if k not in headers]
    fields = list(headers) + absent
    lookup = Headers(fields)
    candidates = [string_to_sign(method=method, content_md5=lookup.get("content-md5") or "",
                                 content_type=lookup.get("content-type") or "", date=params["Expires"],
                                 amz_headers=canonical_amz_headers(fields), resource=resource)
                  for resource in _resources(raw_path, raw_query, host_bucket)]
    _verify(user.secret_key, candidates, params["Signature"], access_key)
    return SigV2Result(auth=_result(user, access_key, params["Signature"], now, lookup, presigned=True),
                       query_headers=tuple(absent))

