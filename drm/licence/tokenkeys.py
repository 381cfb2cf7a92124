"""The token keys of ``[[licence.tokens.keys]]`` made real: HS256 secrets (sealed, from a file or
from the environment), ES256 public keys (PEM) and an issuer's JWKS (parsed here, sans-IO;
fetched by :class:`JwksSource` in the daemon), and the signing side for ``headwater entitle``.

A sealed HS256 secret lives in ``<licence data_dir>/token-<id>.sealed`` (:mod:`headwater.sealed`,
purpose ``drm-token-key``), made on first use by whichever of the daemon and the CLI comes first.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Mapping

import anyio
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from headwater.config import ClusterConfig

from ..errors import KeyStoreError
from .entitlement import VerificationKey

__all__ = ["static_keys", "signing_key", "parse_jwks", "JwksSource", "SEAL_PURPOSE"]

SEAL_PURPOSE = b"drm-token-key"
_MAX_SECRET_FILE = 4096
log = logging.getLogger("headwater.drm.licence")


def _hs_secret(cluster: ClusterConfig, node: Any, k: Any, env: Mapping[str, str]) -> bytes:
    if k.secret == "sealed":
        from headwater.sealed import Sealer, load_or_create

        path = Path(node.data_dir) / f"token-{k.id}.sealed"
        return load_or_create(path, Sealer.from_config(cluster, env=env), SEAL_PURPOSE,
                              lambda: secrets.token_bytes(32))[0]
    if k.secret_env is not None:
        value = env.get(k.secret_env, "").strip()
        if not value:
            raise KeyStoreError(f"token key {k.id}: the environment variable {k.secret_env} is not set")
        return value.encode()
    path = Path(k.secret_file)
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise KeyStoreError(f"token key {k.id}: {path} must be accessible by its owner only (chmod 600 {path})")
    return path.read_bytes()[:_MAX_SECRET_FILE].strip()


def static_keys(cluster: ClusterConfig, node: Any, env: Mapping[str, str] | None = None) -> list[VerificationKey]:
    """The verification keys the config gives directly (every key but JWKS ones)."""
    env = os.environ if env is None else env
    out = []
    for k in node.tokens.keys:
        try:
            if k.alg == "HS256":
                out.append(VerificationKey(kid=k.id, alg="HS256", key=_hs_secret(cluster, node, k, env)))
            elif k.public_key_file is not None:
                pub = serialization.load_pem_public_key(Path(k.public_key_file).read_bytes())
                out.append(VerificationKey(kid=k.id, alg="ES256", key=pub))
        except (OSError, ValueError) as e:
            raise KeyStoreError(f"token key {k.id}: {e}") from None
    return out


def signing_key(cluster: ClusterConfig, node: Any, key_id: str | None = None,
                env: Mapping[str, str] | None = None) -> tuple[str, str, Any]:
    """(kid, alg, key) to mint tokens with: the named key, else the first that can sign here
    (an HS256 key, or an ES256 key with its private_key_file)."""
    env = os.environ if env is None else env
    for k in node.tokens.keys:
        if key_id is not None and k.id != key_id:
            continue
        if k.alg == "HS256":
            return k.id, "HS256", _hs_secret(cluster, node, k, env)
        if k.private_key_file is not None:
            priv = serialization.load_pem_private_key(Path(k.private_key_file).read_bytes(), password=None)
            if not isinstance(priv, ec.EllipticCurvePrivateKey):
                raise KeyStoreError(f"token key {k.id}: {k.private_key_file} is not an EC private key")
            return k.id, "ES256", priv
    raise KeyStoreError(f"no [[licence.tokens.keys]] entry {key_id!r} can sign here" if key_id else
                        "no [[licence.tokens.keys]] entry can sign here (an HS256 key, or ES256 with private_key_file)")


def parse_jwks(body: bytes, *, max_keys: int = 16) -> list[VerificationKey]:
    """The ES256 (P-256) keys of a JWKS document; keys of other types are skipped, a key
    without ``kid`` too (a token must name the key it is verified with). ValueError if the
    document is not a JWKS."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS (no keys array)")
    out: list[VerificationKey] = []
    for entry in doc["keys"][: max_keys * 4]:
        if not isinstance(entry, dict) or entry.get("kty") != "EC" or entry.get("crv") != "P-256":
            continue
        if entry.get("alg", "ES256") != "ES256" or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 128:
            continue
        try:
            key = jwt.PyJWK(entry, algorithm="ES256").key
        except jwt.PyJWTError:
            continue
        out.append(VerificationKey(kid=kid, alg="ES256", key=key))
        if len(out) >= max_keys:
            break
    return out


class JwksSource:
    """An issuer's JWKS, fetched at start, every ``refresh_s``, and early (at most once per
    ``min_interval_s``) when a token names an unknown kid. A failed fetch keeps the last keys."""

    def __init__(self, url: str, *, refresh_s: float, max_bytes: int, max_keys: int,
                 monotonic: Callable[[], float], min_interval_s: float = 30.0, verify: Any = True) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self.max_bytes = max_bytes
        self.max_keys = max_keys
        self.monotonic = monotonic
        self.min_interval_s = min_interval_s
        self.verify = verify
        self.keys: list[VerificationKey] = []
        self.fetched_at: float | None = None
        self.errors = 0
        self._last_try = -1e18
        self._wake = anyio.Event()

    def request_refresh(self, kid: str) -> None:
        """A token named ``kid``, which no key has: fetch again soon (rate-limited)."""
        if self.monotonic() - self._last_try >= self.min_interval_s:
            self._wake.set()

    async def fetch_once(self) -> None:
        import httpx

        self._last_try = self.monotonic()
        try:
            async with httpx.AsyncClient(timeout=5.0, verify=self.verify, trust_env=False) as client:
                async with client.stream("GET", self.url) as r:
                    if r.status_code != 200:
                        raise ValueError(f"HTTP {r.status_code}")
                    body = b""
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise ValueError(f"larger than {self.max_bytes} bytes")
            self.keys = parse_jwks(body, max_keys=self.max_keys)
            self.fetched_at = self.monotonic()
        except (httpx.HTTPError, ValueError) as e:
            self.errors += 1
            log.warning("licence: fetching the JWKS %s failed: %s", self.url, e,
                        extra={"event": "licence.jwks_failed", "url": self.url})

    async def run_forever(self) -> None:
        while True:
            await self.fetch_once()
            with anyio.move_on_after(self.refresh_s):
                await self._wake.wait()
            self._wake = anyio.Event()
