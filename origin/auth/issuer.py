"""The built-in OAuth2 issuer: the client-credentials grant (RFC 6749 §4.4) minting RFC 9068
access tokens signed ES256, its JWKS and its metadata (RFC 8414).

So that ``make up`` works alone. A real deployment names its OIDC provider in
``[origin.oauth]`` instead (issuer + jwks_url) and this issuer is off.

- The signing key: a P-256 key made on first start and sealed under the cluster secret
  (:mod:`headwater.sealed`, purpose ``origin-token-key``) in ``<data_dir>/issuer-es256.sealed``;
  its ``kid`` is its RFC 7638 thumbprint, so a new key is a new kid.
- Clients (``[[origin.clients]]``): a sealed random secret (``<data_dir>/client-<id>.sealed``,
  purpose ``origin-client-secret``) or the SHA-256 of the operator's own secret; compared in
  constant time either way.
- The token request (sans-IO, :func:`parse_token_request`): ``POST /oauth/token``,
  ``application/x-www-form-urlencoded``, ``grant_type=client_credentials``, optional ``scope``;
  the client authenticates with HTTP Basic (id and secret form-encoded first, §2.3.1) or with
  ``client_id``/``client_secret`` in the body, never both.
- ``grant_type=authorization_code`` (RFC 6749 §4.1.3) for people signing in on the origin's
  page (:mod:`.login`): the public client ``headwater-web`` sends ``code``, ``redirect_uri`` and
  its PKCE ``code_verifier``, no secret; the token's ``sub`` is the user's name.
- Users (``[[origin.users]]``): ``password = "sealed"`` (random, made on first use, sealed in
  ``<data_dir>/user-<name>.sealed``, purpose ``origin-user-password``; ``headwater password
  --user NAME`` shows it) or ``password_scrypt`` (``headwater password --hash``).

With the PostgreSQL catalogue (several origin hosts) the signing key, the sealed client secrets
and the sealed passwords are not files but rows of the catalogue's ``cluster_secrets``, sealed
the same way, made once for the cluster (:mod:`.shared`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import uuid
from typing import Any, Mapping
from urllib.parse import parse_qsl, unquote_plus

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..config import ClientConfig, OriginConfig
from ..errors import InvalidClient, InvalidGrant, InvalidScope, UnsupportedGrantType
from .login import PUBLIC_CLIENT, CodeStore, User, UserDirectory
from .shared import shared_secret
from .tokens import AccessKey

__all__ = ["TokenRequest", "parse_token_request", "ClientRegistry", "Issuer", "client_secret", "load_signing_key",
           "KEY_PURPOSE", "CLIENT_PURPOSE", "USER_PURPOSE", "MAX_TOKEN_REQUEST", "user_password", "users_from_config"]

KEY_PURPOSE = b"origin-token-key"
CLIENT_PURPOSE = b"origin-client-secret"
USER_PURPOSE = b"origin-user-password"
MAX_TOKEN_REQUEST = 4096


class TokenRequest:
    """A parsed token request: client credentials, or (``grant == "authorization_code"``) a
    code with its redirect URI and PKCE verifier."""

    __slots__ = ("client_id", "client_secret", "scopes", "grant", "code", "redirect_uri", "code_verifier")

    def __init__(self, client_id: str, client_secret: str, scopes: tuple[str, ...] | None, *,
                 grant: str = "client_credentials", code: str = "", redirect_uri: str = "",
                 code_verifier: str = "") -> None:
        self.client_id, self.client_secret, self.scopes = client_id, client_secret, scopes
        self.grant, self.code, self.redirect_uri, self.code_verifier = grant, code, redirect_uri, code_verifier


def parse_token_request(authorization: str | None, content_type: str | None, body: bytes) -> TokenRequest:
    """The client credentials and scopes of a token request (see the module docstring)."""
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise InvalidGrant("the token request is application/x-www-form-urlencoded")
    try:
        form = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body),
                         max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise InvalidGrant("the token request body is not a form") from None
    fields: dict[str, str] = {}
    for k, v in form:
        if k in fields:
            raise InvalidGrant(f"{k!r} is given twice")  # RFC 6749 §3.2
        fields[k] = v
    grant = fields.get("grant_type")
    if grant is None:
        raise InvalidGrant("grant_type is missing")
    if grant == "authorization_code":
        if authorization or "client_secret" in fields:
            raise InvalidClient(f"{PUBLIC_CLIENT} is a public client: no secret (PKCE proves the code is its own)")
        if fields.get("client_id") != PUBLIC_CLIENT:
            raise InvalidClient(f"the authorization code grant is for client {PUBLIC_CLIENT!r}")
        missing = [k for k in ("code", "redirect_uri", "code_verifier") if not fields.get(k)]
        if missing:
            raise InvalidGrant(f"{missing[0]} is missing")
        return TokenRequest(PUBLIC_CLIENT, "", None, grant=grant, code=fields["code"],
                            redirect_uri=fields["redirect_uri"], code_verifier=fields["code_verifier"])
    if grant != "client_credentials":
        raise UnsupportedGrantType(f"grant_type {grant[:40]!r}: this issuer grants client_credentials and "
                                   "authorization_code")
    scheme, _, cred = (authorization or "").partition(" ")
    if authorization:
        if scheme.lower() != "basic":
            raise InvalidClient("client authentication is HTTP Basic or client_id/client_secret in the body")
        if "client_secret" in fields:
            raise InvalidGrant("authenticate with one method: HTTP Basic or the body, not both")
        try:
            pair = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidClient("the Basic credentials are not base64 of id:secret") from None
        raw_id, sep, raw_secret = pair.partition(":")
        if not sep:
            raise InvalidClient("the Basic credentials are not id:secret")
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if "client_id" in fields and fields["client_id"] != client_id:
            raise InvalidGrant("client_id differs from the authenticated client")
    else:
        client_id, secret = fields.get("client_id", ""), fields.get("client_secret", "")
        if not client_id or not secret:
            raise InvalidClient("no client authentication (HTTP Basic, or client_id and client_secret)")
    scope = fields.get("scope")
    scopes = tuple(dict.fromkeys(scope.split())) if scope is not None else None
    if scopes is not None and (not scopes or len(scopes) > 16):
        raise InvalidScope("scope is 1..16 space-separated scopes")
    return TokenRequest(client_id, secret, scopes)


def client_secret(cluster: Any, node: OriginConfig, client: ClientConfig, *, db: Any = None) -> str:
    """A sealed client's secret, made on first use (the daemon and ``headwater token`` share it;
    every origin host of the cluster too: :mod:`.shared`)."""
    return shared_secret(cluster, node, f"client-{client.id}", CLIENT_PURPOSE,
                         lambda: secrets.token_urlsafe(32).encode(), db=db).decode()


def user_password(cluster: Any, node: OriginConfig, name: str, *, db: Any = None) -> str:
    """A sealed user's password, made on first use (the daemon and ``headwater password`` share it;
    every origin host of the cluster too: :mod:`.shared`)."""
    return shared_secret(cluster, node, f"user-{name}", USER_PURPOSE,
                         lambda: secrets.token_urlsafe(18).encode(), db=db).decode()


def users_from_config(cluster: Any, node: OriginConfig, *, db: Any = None) -> UserDirectory:
    """``[[origin.users]]`` as a :class:`UserDirectory` (sealed passwords unsealed once)."""
    users = {}
    for u in node.users:
        digest = hashlib.sha256(user_password(cluster, node, u.name, db=db).encode()).digest() if u.sealed \
            else None
        users[u.name] = User(name=u.name, scopes=u.scopes, scrypt=u.password_scrypt, sha256=digest)
    return UserDirectory(users)


class ClientRegistry:
    """The configured clients and the SHA-256 of each one's secret (sealed ones unsealed once)."""

    def __init__(self, clients: Mapping[str, tuple[ClientConfig, bytes]]) -> None:
        self._clients = dict(clients)

    @classmethod
    def from_config(cls, cluster: Any, node: OriginConfig, *, db: Any = None) -> ClientRegistry:
        out = {}
        for c in node.clients:
            digest = c.secret_sha256 if c.secret_sha256 is not None else \
                hashlib.sha256(client_secret(cluster, node, c, db=db).encode()).digest()
            out[c.id] = (c, digest)
        return cls(out)

    def authenticate(self, client_id: str, secret: str) -> ClientConfig:
        """The client, if ``secret`` is its secret; InvalidClient otherwise (one answer for an
        unknown client and a wrong secret)."""
        entry = self._clients.get(client_id)
        digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        # Compare even for an unknown client: the time does not tell which ids exist.
        ok = hmac.compare_digest(digest, entry[1] if entry else b"\0" * 32)
        if entry is None or not ok:
            raise InvalidClient("unknown client or wrong secret")
        return entry[0]


def _thumbprint(public: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638: SHA-256 of the canonical JWK (crv, kty, x, y), base64url."""
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canon.encode()).digest()).rstrip(b"=").decode()


def load_signing_key(cluster: Any, node: OriginConfig, *, db: Any = None) -> ec.EllipticCurvePrivateKey:
    """The issuer's P-256 key, made and sealed on first use (one for every origin host of the
    cluster: :mod:`.shared`)."""
    def make() -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    pem = shared_secret(cluster, node, "issuer-es256", KEY_PURPOSE, make, db=db)
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the issuer's sealed signing key is not an EC key")
    return key


class Issuer:
    """Mints access tokens for authenticated clients (sans-IO but for the key it is given)."""

    def __init__(self, *, key: ec.EllipticCurvePrivateKey, issuer: str, audience: str, lifetime_s: float,
                 clients: ClientRegistry, codes: CodeStore | None = None) -> None:
        self.key = key
        self.codes = codes if codes is not None else CodeStore()
        self.issuer = issuer
        self.audience = audience
        self.lifetime_s = lifetime_s
        self.clients = clients
        self.kid = _thumbprint(key.public_key())
        self.access_key = AccessKey(kid=self.kid, alg="ES256", key=key.public_key())

    def grant(self, request: TokenRequest, now: float) -> dict[str, Any]:
        """The token response (RFC 6749 §5.1) for ``request``."""
        if request.grant == "authorization_code":
            g = self.codes.redeem(code=request.code, redirect_uri=request.redirect_uri,
                                  verifier=request.code_verifier, now=now)
            token = self.mint(g.user, g.scopes, now, client_id=PUBLIC_CLIENT)
            return {"access_token": token, "token_type": "Bearer", "expires_in": int(self.lifetime_s),
                    "scope": " ".join(g.scopes)}
        client = self.clients.authenticate(request.client_id, request.client_secret)
        scopes = request.scopes if request.scopes is not None else client.scopes
        other = [s for s in scopes if s not in client.scopes]
        if other:
            raise InvalidScope(f"client {client.id!r} may not have scope {other[0]!r}")
        token = self.mint(client.id, scopes, now)
        return {"access_token": token, "token_type": "Bearer", "expires_in": int(self.lifetime_s),
                "scope": " ".join(scopes)}

    def mint(self, subject: str, scopes: tuple[str, ...], now: float, *, client_id: str | None = None,
             lifetime_s: float | None = None) -> str:
        """An RFC 9068 access token for ``subject`` (a client, which is then its own client_id, or
        a signed-in user of ``client_id``)."""
        iat = int(now)
        claims = {"iss": self.issuer, "sub": subject, "client_id": client_id or subject, "aud": self.audience,
                  "iat": iat, "exp": iat + int(self.lifetime_s if lifetime_s is None else lifetime_s),
                  "jti": uuid.uuid4().hex, "scope": " ".join(scopes)}
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid, "typ": "at+jwt"})

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWKS (RFC 7517)."""
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}]}

    def metadata(self, scopes: tuple[str, ...]) -> dict[str, Any]:
        """Authorization server metadata (RFC 8414)."""
        return {"issuer": self.issuer, "token_endpoint": f"{self.issuer}/oauth/token",
                "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
                "authorization_endpoint": f"{self.issuer}/oauth/authorize",
                "grant_types_supported": ["client_credentials", "authorization_code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                "response_types_supported": ["code"], "scopes_supported": list(scopes),
                "token_endpoint_auth_signing_alg_values_supported": ["ES256"]}
