"""The origin behind an external OIDC issuer (``[origin.oauth] issuer`` + ``jwks_url``), as a
deployment with its own identity provider runs it: the built-in issuer is off, and access
tokens (RFC 9068 JWTs, RS256 here) are checked against the provider's JWKS, fetched over HTTP
and fetched again when a token names a key the origin has not seen (key rotation).

The provider is a stand-in: a JWKS document served over HTTP by this test, and tokens signed
with its RSA keys by PyJWT, the library OIDC providers' SDKs use.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.cluster import free_ports

from .origin_harness import auth, origin_fixture

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB", min_part_size="5MiB")

ISSUER_PORT = free_ports(1)[0]
ISSUER = f"http://127.0.0.1:{ISSUER_PORT}/realms/studio"
AUDIENCE = "https://origin.example/api"

origin = origin_fixture(f"""
[origin.oauth]
issuer = "{ISSUER}"
jwks_url = "http://127.0.0.1:{ISSUER_PORT}/realms/studio/certs"
audience = "{AUDIENCE}"
jwks_refresh_seconds = 3600
jwks_min_refresh_seconds = 2
""")


class Provider:
    """The identity provider's side: its signing keys and the JWKS document that publishes them."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[str] = []
        self.fetches = 0
        self.add_key()

    def add_key(self, *, publish: bool = True) -> str:
        kid = uuid.uuid4().hex[:12]
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published.append(kid)
        return kid

    def jwks(self) -> bytes:
        keys = []
        for kid in self.published:
            jwk = json.loads(RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return json.dumps({"keys": keys}).encode()

    def token(self, scope: str, *, kid: str | None = None, aud: str = AUDIENCE, iss: str = ISSUER,
              lifetime: float = 300, typ: str = "at+jwt") -> str:
        kid = kid or self.published[0]
        now = int(time.time())
        claims = {"iss": iss, "aud": aud, "sub": "creator-42", "client_id": "studio-web", "scope": scope,
                  "iat": now, "exp": now + lifetime, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid, "typ": typ})


@pytest.fixture(scope="module")
def provider():
    p = Provider()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            if self.path != "/realms/studio/certs":
                self.send_error(404)
                return
            p.fetches += 1
            body = p.jwks()
            self.send_response(200)
            self.send_header("content-type", "application/jwk-set+json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", ISSUER_PORT), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield p
    server.shutdown()
    server.server_close()


def create(c, token: str) -> int:
    return c.post("/uploads", headers={**auth(token), "upload-length": "10"}).status_code


def test_an_external_issuers_tokens_are_checked_against_its_jwks(provider, origin):
    with origin.http() as c:
        # The provider's token with the upload scope: accepted (201, an upload made).
        r = c.post("/uploads", headers={**auth(provider.token("upload")), "upload-length": "10"})
        assert r.status_code == 201, r.text
        assert c.delete(r.headers["location"], headers=auth(provider.token("upload"))).status_code == 204
        # Scope, audience, issuer, expiry, type: each checked.
        assert create(c, provider.token("view")) == 403
        for bad in (provider.token("upload", aud="https://another.example"),
                    provider.token("upload", iss="https://evil.example/realms/studio"),
                    provider.token("upload", lifetime=-3600),
                    provider.token("upload", typ="JWT")):
            r = c.post("/uploads", headers={**auth(bad), "upload-length": "10"})
            assert r.status_code == 401 and r.json()["error"] == "invalid_token", r.text
        # A key the provider never published: refused, however well-formed the token.
        rogue = provider.add_key(publish=False)
        assert create(c, provider.token("upload", kid=rogue)) == 401
        # Key rotation: one token under a newly published key, sent within jwks_min_refresh_seconds
        # of the last fetch (the rogue kid's), is refused but makes the origin fetch the JWKS again
        # once the interval is over, without another token to remind it; then the key works.
        rotated = provider.add_key()
        fetched = provider.fetches
        assert create(c, provider.token("upload", kid=rotated)) == 401
        deadline = time.monotonic() + 15
        while provider.fetches == fetched and time.monotonic() < deadline:
            time.sleep(0.1)
        assert provider.fetches > fetched, "the JWKS was not fetched again"
        time.sleep(0.3)  # (the fetched keys replace the old ones once the body is read)
        assert create(c, provider.token("upload", kid=rotated)) == 201
        # The built-in issuer is off: its token endpoint issues nothing.
        r = c.post("/oauth/token", data={"grant_type": "client_credentials"},
                   auth=("creator-app", "nope"))
        assert r.status_code in (400, 401, 404)
        assert "access_token" not in r.text
