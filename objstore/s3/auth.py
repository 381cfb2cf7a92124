"""Which signature a request carries, and its verification: SigV4 or SigV2, header or query.

:func:`authenticate` is what the gateway calls for every request. It picks the scheme from the
``Authorization`` header's algorithm (``AWS4-HMAC-SHA256`` or ``AWS``) or from the query
parameters (``X-Amz-Signature`` / ``X-Amz-Credential`` for SigV4, ``AWSAccessKeyId`` /
``Signature`` / ``Expires`` for SigV2), and answers as S3 does when a request carries both a
header and a query signature, or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from headwater.http.types import Headers

from ..config import User
from . import sigv2, sigv4
from .errors import InvalidArgument

__all__ = ["Authenticated", "authenticate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticated:
    """A verified request: what the body checks need (``auth``), the signature version, and the
    signed header fields a presigned URL (SigV2, or SigV4 with hoisted ``x-amz-*`` fields)
    carried in its query (to apply as headers)."""

    auth: sigv4.AuthResult
    version: int
    query_headers: tuple[tuple[str, str], ...] = ()


def authenticate(*, method: str, raw_path: str, raw_query: str, headers: Headers,
                 lookup_user: Callable[[str], User | None], region: str | None, now: float,
                 max_skew_s: int = 900, host: str | None = None,
                 host_bucket: str | None = None) -> Authenticated:
    """Verify the request's signature, whichever version; raise an S3 error if it fails.

    ``host_bucket`` is the bucket named by the Host header (virtual-host style), which SigV2
    signs in front of the path. The other arguments are :func:`sigv4.authenticate`'s.
    """
    authz = headers.get("authorization")
    v2_query = sigv2.has_query_auth(raw_query)
    if authz is not None and authz.strip().startswith("AWS "):
        if v2_query or sigv4.has_query_auth(raw_query):
            raise InvalidArgument("Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                                  "parameter, Signature query string parameter or the Authorization "
                                  "header should be specified", ArgumentName="Authorization",
                                  ArgumentValue=authz)
        r = sigv2.authenticate_header(method=method, raw_path=raw_path, raw_query=raw_query, headers=headers,
                                      authorization=authz, lookup_user=lookup_user, now=now,
                                      max_skew_s=max_skew_s, host_bucket=host_bucket)
        return Authenticated(auth=r.auth, version=2)
    if authz is None and v2_query and not sigv4.has_query_auth(raw_query):
        r = sigv2.authenticate_query(method=method, raw_path=raw_path, raw_query=raw_query, headers=headers,
                                     lookup_user=lookup_user, now=now, host_bucket=host_bucket)
        return Authenticated(auth=r.auth, version=2, query_headers=r.query_headers)
    a = sigv4.authenticate(method=method, raw_path=raw_path, raw_query=raw_query, headers=headers,
                           lookup_user=lookup_user, region=region, now=now, max_skew_s=max_skew_s, host=host)
    hoisted = sigv4.hoisted_headers(raw_query, headers) if a.presigned else ()
    return Authenticated(auth=a, version=4, query_headers=hoisted)
