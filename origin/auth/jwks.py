"""An external issuer's JWKS: parsed sans-IO (:func:`parse_jwks`) and fetched by
:class:`JwksSource` with the kernel's :class:`~headwater.http.client.HttpClient`: bounded in
bytes and keys, at start, every ``refresh_s``, and early (at most once per ``min_interval_s``)
when a token names an unknown kid. A failed fetch keeps the last keys.

The licence server has its own (``drm/licence/tokenkeys.py``, on httpx, ES256 only); the two
differ in the algorithms they accept and a daemon package never imports another, so each keeps
its fifty lines rather than a kernel module serving neither exactly.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable
from urllib.parse import urlsplit

import anyio
import jwt

from headwater.http.errors import BadResponse, ConnectFailed, ResponseTimeout

from .tokens import AccessKey

__all__ = ["parse_jwks", "JwksSource"]

log = logging.getLogger("headwater.origin.auth")
_KTY = {"EC": "ES256", "RSA": "RS256"}


def parse_jwks(body: bytes, *, max_keys: int = 16) -> list[AccessKey]:
    """The signing keys of a JWKS document usable for access tokens (ES256 on P-256, RS256);
    keys of other types, other uses or without ``kid`` are skipped. ValueError if the document
    is not a JWKS."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS (no keys array)")
    out: list[AccessKey] = []
    for entry in doc["keys"][: max_keys * 4]:
        if not isinstance(entry, dict) or entry.get("kty") not in _KTY or entry.get("use", "sig") != "sig":
            continue
        alg = _KTY[entry["kty"]]
        if entry.get("alg", alg) != alg or (alg == "ES256" and entry.get("crv") != "P-256"):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 128:
            continue
        try:
            out.append(AccessKey(kid=kid, alg=alg, key=jwt.PyJWK(entry, algorithm=alg).key))
        except (jwt.PyJWTError, ValueError):
            continue
        if len(out) >= max_keys:
            break
    return out


class JwksSource:
    """An issuer's JWKS kept fresh (see the module docstring)."""

    def __init__(self, url: str, *, client: Any, refresh_s: float, max_bytes: int, max_keys: int,
                 monotonic: Callable[[], float], min_interval_s: float = 30.0) -> None:
        self.url = url
        self.client = client
        self.refresh_s = refresh_s
        self.max_bytes = max_bytes
        self.max_keys = max_keys
        self.monotonic = monotonic
        self.min_interval_s = min_interval_s
        self.keys: list[AccessKey] = []
        self.errors = 0
        self._last_try = -1e18
        self._wake = anyio.Event()

    def request_refresh(self, kid: str) -> None:
        """A token named ``kid``, which no key has: fetch again, ``min_interval_s`` after the last
        fetch at the earliest (a flood of made-up kids costs the issuer one fetch per interval;
        a real rotation is picked up by then without waiting for another token)."""
        self._wake.set()

    async def fetch_once(self) -> None:
        self._last_try = self.monotonic()
        parts = urlsplit(self.url)
        try:
            resp = await self.client.request("GET", self.url, [("host", parts.netloc), ("accept", "application/json")],
                                             timeout_s=5.0)
            try:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await resp.read(self.max_bytes)
            finally:
                await resp.aclose()
            self.keys = parse_jwks(body, max_keys=self.max_keys)
        except (ConnectFailed, ResponseTimeout, BadResponse, ValueError, OSError) as e:
            self.errors += 1
            log.warning("origin: fetching the JWKS %s failed: %s", self.url, e,
                        extra={"event": "origin.jwks_failed", "url": self.url})

    async def run_forever(self) -> None:
        while True:
            await self.fetch_once()
            with anyio.move_on_after(self.refresh_s):
                await self._wake.wait()
                early = self._last_try + self.min_interval_s - self.monotonic()
                if early > 0:
                    await anyio.sleep(early)
            self._wake = anyio.Event()
