"""AWS Signature Version 4, signing only, sans-IO: the edge shield's GETs to an S3 origin and
the packager's PUTs of segments into the object store.

Why our own ~60 lines rather than botocore: botocore is a test dependency only (tens of MB for
one function), and the object store's SigV4 code is a *verifier* inside another daemon package,
which no other package may import (docs/architecture.md). The unit test checks our signatures
against botocore's ``SigV4Auth`` and the object store's gateway accepts them end to end.

Path-style (``/bucket/key``), S3's single URI encoding. ``payload_sha256`` is the hex SHA-256
of the body (the empty body's by default, for GET and HEAD).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, unquote

__all__ = ["EMPTY_SHA256", "sign_request", "canonical_path", "canonical_query"]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UNRESERVED = "-_.~"


def canonical_path(raw_path: str) -> str:
    """``raw_path`` (as received, %-encoded) in SigV4's form for S3: each byte but the
    unreserved ones and ``/`` percent-encoded once."""
    return quote(unquote(raw_path), safe="/" + _UNRESERVED)


def canonical_query(raw_query: str) -> str:
    """The query's parameters sorted by name then value, each name and value encoded once."""
    pairs = []
    for part in raw_query.split("&") if raw_query else ():
        name, _, value = part.partition("=")
        pairs.append((quote(unquote(name), safe=_UNRESERVED), quote(unquote(value), safe=_UNRESERVED)))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign_request(method: str, host: str, raw_path: str, raw_query: str, *, access_key: str, secret_key: str,
                 region: str, service: str = "s3", now: float | None = None,
                 extra_headers: tuple[tuple[str, str], ...] = (),
                 payload_sha256: str = EMPTY_SHA256) -> list[tuple[str, str]]:
    """The headers to add to a request of ``host`` + ``raw_path``?``raw_query`` (``host`` as
    sent in the Host header, with its port): x-amz-date, x-amz-content-sha256, authorization.

    ``extra_headers`` (lower-case names, e.g. ``range``, ``if-none-match``) are signed too.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    day = stamp[:8]
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": stamp}
    for name, value in extra_headers:
        headers[name.lower()] = " ".join(value.strip().split())
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join([method, canonical_path(raw_path), canonical_query(raw_query),
                           "".join(f"{n}:{headers[n]}\n" for n in names), signed, payload_sha256])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return [("x-amz-date", stamp), ("x-amz-content-sha256", payload_sha256),
            ("authorization", f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, "
                              f"Signature={signature}")]
