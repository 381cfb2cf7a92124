"""What another daemon (the origin) may use of the edge: the only module it imports from here.

- :func:`signed_grant`: one CloudFront custom policy over a resource with a ``*`` wildcard
  (``https://cdn/titles/7/v12/*``), signed once with a ``[[cdn.keys]]`` key, returned both as the
  query string of a signed URL and as the three signed cookies (the same policy and signature):
  the POPs accept either (:mod:`.signedurl`).
- :func:`find_signing_key`, :func:`default_cdn_base_url`, :func:`default_distribution`: reading
  this cluster's ``[cdn]``, ``[[edge]]`` and ``[[distributions]]`` the way the edge reads them.
- :class:`EdgePurger`: invalidation by surrogate key (tag) or path, the request ``headwater cdn
  invalidate --tag`` sends — a ``POST /_hw/invalidate`` to the purge home (the first shield),
  signed with the cluster secret (:mod:`.adminauth`) — over the caller's own HTTP client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from headwater.http.client import HttpClient
from headwater.http.errors import BadResponse, ConnectFailed, ResponseTimeout

from .adminauth import AdminKey, admin_key
from .config import purge_home
from .invalidation import INVALIDATE_PATH
from .signedurl import SigningKey, load_private_key, sign_cookies

__all__ = ["SignedGrant", "SigningKey", "signed_grant", "find_signing_key", "default_cdn_base_url",
           "default_distribution", "EdgePurger", "PurgeFailed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedGrant:
    """A signed policy: ``query`` to append to any URL it covers (``?`` + query), ``cookies``
    (name → value) for players that send cookies instead, ``expires`` (epoch seconds)."""

    query: str
    cookies: dict[str, str]
    expires: int


def signed_grant(resource: str, key: SigningKey, *, expires: int) -> SignedGrant:
    """``resource`` (``*`` wildcards allowed) granted until ``expires`` with ``key``; ValueError
    when this host has no private key for it."""
    if key.private_key_pem is None:
        raise ValueError(f"[[cdn.keys]] {key.id} has no private_key_file here: cannot sign with it")
    cookies = sign_cookies(resource, key_id=key.id, private_key=load_private_key(key.private_key_pem),
                           expires=expires)
    # The query parameters are the cookies' values under CloudFront's query names, in
    # botocore's order (Policy or Expires, Signature, Key-Pair-Id).
    names = {"CloudFront-Policy": "Policy", "CloudFront-Expires": "Expires", "CloudFront-Signature": "Signature",
             "CloudFront-Key-Pair-Id": "Key-Pair-Id", "CloudFront-Hash-Algorithm": "Hash-Algorithm"}
    query = "&".join(f"{names[k]}={v}" for k, v in cookies.items())  # values are already URL-safe
    return SignedGrant(query=query, cookies=dict(cookies), expires=int(expires))


def find_signing_key(cluster: Any, key_id: str = "") -> SigningKey | None:
    """The ``[[cdn.keys]]`` entry ``key_id`` (ValueError if it is absent or has no private key
    here); with ``key_id`` empty the first entry that has a private key, else None."""
    cdn = getattr(cluster, "cdn", None)
    keys = tuple(cdn.keys.keys) if cdn is not None else ()
    if key_id:
        for k in keys:
            if k.id == key_id:
                if k.missing:
                    raise ValueError(f"[[cdn.keys]] {key_id}: {k.auto_file} is not made yet "
                                     "(`headwater up` makes it on first start, or `headwater cdn keygen`)")
                if k.private_key_pem is None:
                    raise ValueError(f"[[cdn.keys]] {key_id} has no private_key_file: the origin cannot sign")
                return k
        raise ValueError(f"no [[cdn.keys]] entry {key_id!r}")
    for k in keys:
        if k.private_key_pem is not None:
            return k
    return None


def default_cdn_base_url(cluster: Any) -> str | None:
    """The first ``[[edge]]`` POP's URL: https on its ``tls_port`` when it has one; None with no POP."""
    for e in tuple(getattr(cluster, "edge", ()) or ()):
        if e.tier == "pop":
            return f"https://{e.host}:{e.tls_port}" if e.tls_port is not None else f"http://{e.host}:{e.port}"
    return None


def default_distribution(cluster: Any) -> str | None:
    """The first ``[[distributions]]`` entry's name, or None."""
    dists = tuple(getattr(cluster, "distributions", ()) or ())
    return dists[0].name if dists else None


class PurgeFailed(Exception):
    """The edge did not accept an invalidation (unreachable, refused, or an answer not its own)."""


class EdgePurger:
    """Sends invalidations of one distribution to the edge's purge home (see the module docstring).

    Built from the cluster config and its secret; None from :meth:`from_cluster` when the
    cluster has no ``[[edge]]`` daemon."""

    def __init__(self, *, url: str, key: AdminKey, distribution: str, client: HttpClient,
                 timeout_s: float = 10.0) -> None:
        self.url = url
        self.key = key
        self.distribution = distribution
        self.client = client
        self.timeout_s = timeout_s

    @classmethod
    def from_cluster(cls, cluster: Any, *, client: HttpClient, distribution: str = "",
                     timeout_s: float = 10.0) -> EdgePurger | None:
        home = purge_home(cluster)
        name = distribution or default_distribution(cluster)
        if home is None or name is None:
            return None
        from headwater.rpc.auth import cluster_secret

        return cls(url=f"http://{home.host}:{home.admin_port}", key=admin_key(cluster_secret(cluster)),
                   distribution=name, client=client, timeout_s=timeout_s)

    async def purge(self, *, tags: Sequence[str] = (), paths: Sequence[str] = (), now: float) -> int:
        """Purge ``tags`` and ``paths`` from every tier; the purge's sequence number once the
        purge home made it durable (every tier applies it before serving again)."""
        body = json.dumps({"distribution": self.distribution, "paths": list(paths), "tags": list(tags)}).encode()
        headers = [("host", self.url.split("://", 1)[1]), ("content-type", "application/json"),
                   ("content-length", str(len(body))),
                   ("authorization", self.key.authorization("POST", INVALIDATE_PATH, body, now=now))]
        try:
            resp = await self.client.request("POST", self.url + INVALIDATE_PATH, headers, body=body,
                                             timeout_s=self.timeout_s)
            try:
                answer = await resp.read(64 * 1024)
            finally:
                await resp.aclose()
        except (ConnectFailed, ResponseTimeout, BadResponse, OSError) as e:
            raise PurgeFailed(f"the edge ({self.url}) did not answer the invalidation: {e}") from None
        try:
            doc = json.loads(answer)
        except ValueError:
            doc = {}
        if resp.status != 201 or not isinstance(doc, dict) or not isinstance(doc.get("seq"), int):
            raise PurgeFailed(f"the edge refused the invalidation ({resp.status}): {answer[:300]!r}")
        return int(doc["seq"])


