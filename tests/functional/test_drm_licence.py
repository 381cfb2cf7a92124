"""The licence daemon as an operator runs it: ``headwater node licence`` from a cluster.toml in a
temporary folder (TLS "auto" from the local CA), keys made with ``headwater keys new`` *after*
the daemon started (it reads them from the shared LMDB store without a restart), a token from
``headwater entitle``, and curl over TLS trusting only ``headwater ca path``.

Covered: the right token gets the right key (the bytes ``keys new --show-key`` printed), with
the exact CORS answer for a credentialed origin; the preflight; another title's KID -> 403 JSON;
no token -> 401; garbage body -> 400; a 1 MB body -> 413; a trickled body is cut off by the HTTP
core's body limits while the daemon keeps serving; an audit line for each, with no key or token
in the audit log. Key delivery for classic AES-128 HLS (``GET /keys/<KID hex>``): the raw key to
an entitled token, with CORS and its preflight; 401, 403, 404, 405 otherwise; audit lines.
ES256 tokens from an issuer's JWKS (a real HTTP server in this process serving P-256 public
keys, the daemon configured with its ``jwks_url``): a signed token is granted; the issuer
rotates its key and a token under the new kid gets its licence after the one refresh its
unknown kid triggers; a burst of unknown kids fetches at most once per
``jwks_min_refresh_seconds``; an HS256 token made with the public key as its secret is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from headwater.drm.licence.entitlement import sign_token
from tests.functional.licence_harness import CONFIG, cli, running_licence, unb64

ORIGIN = "https://player.example"
JWKS_MIN_REFRESH_S = 2


class Issuer:
    """A token issuer's JWKS endpoint: a real HTTP server (a thread) serving the public halves
    of the keys it currently publishes; ``fetches`` counts GETs."""

    def __init__(self) -> None:
        self.published: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.fetches = 0
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                keys = [{**jwt.algorithms.ECAlgorithm.to_jwk(k.public_key(), as_dict=True), "kid": kid,
                         "alg": "ES256", "use": "sig"} for kid, k in issuer.published.items()]
                body = json.dumps({"keys": keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def publish(self, **keys: ec.EllipticCurvePrivateKey) -> None:
        self.published = dict(keys)

    def token(self, kid: str, title: str, user: str) -> str:
        now = int(time.time())
        claims = {"sub": user, "titles": [title], "iat": now, "exp": now + 600, "jti": f"{user}-{kid}-{now}"}
        return sign_token(claims, self.published[kid], "ES256", kid=kid)

    def __enter__(self) -> "Issuer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with Issuer() as i:
        i.publish(**{"issuer-a": ec.generate_private_key(ec.SECP256R1())})
        yield i


@pytest.fixture(scope="module")
def licence(tmp_path_factory, issuer):
    # The HS256 key `headwater entitle` signs with, and the issuer's JWKS beside it (an hour
    # between regular fetches: every fetch in these tests is one a token caused).
    config = CONFIG + f"""
[[licence.tokens.keys]]
id = "issuer"
alg = "ES256"
jwks_url = "{issuer.url}"
jwks_refresh_seconds = 3600
jwks_min_refresh_seconds = {JWKS_MIN_REFRESH_S}
"""
    with running_licence(tmp_path_factory.mktemp("licence"), config=config) as lic:
        yield lic, lic.config


def test_licence_end_to_end(licence):
    lic, path = licence
    # Keys made while the daemon runs: it must see them without a restart.
    out1 = cli(path, "keys", "new", "--title", "1", "--scheme", "cbcs", "--show-key").splitlines()
    kid1, key1 = out1[0].split()[1], out1[1].split()[1]
    out2 = cli(path, "keys", "new", "--title", "2").splitlines()
    assert len(out2) == 1 and "key" not in out2[0].split()[0:1]  # the key is printed only when asked
    kid2 = out2[0].split()[1]
    listed = cli(path, "keys", "list")
    assert kid1 in listed and kid2 in listed and key1 not in listed
    token = cli(path, "entitle", "--user", "alice", "--title", "1", "--expires", "2h").strip()
    auth = ["-H", f"Authorization: Bearer {token}", "-H", f"Origin: {ORIGIN}", "-H", "Content-Type: application/json"]

    # The right token gets the right key.
    status, headers, body = lic.curl("-X", "POST", *auth, "--data", json.dumps({"kids": [kid1], "type": "temporary"}))
    assert status == 200, body
    doc = json.loads(body)
    assert doc == {"keys": [{"kty": "oct", "kid": kid1, "k": key1}], "type": "temporary"}
    assert len(unb64(doc["keys"][0]["k"])) == 16
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["access-control-allow-credentials"] == "true" and headers["cache-control"] == "no-store"

    # The preflight a browser sends first.
    status, headers, _ = lic.curl("-X", "OPTIONS", "-H", f"Origin: {ORIGIN}",
                                  "-H", "Access-Control-Request-Method: POST",
                                  "-H", "Access-Control-Request-Headers: authorization,content-type")
    assert status == 204
    assert headers["access-control-allow-origin"] == ORIGIN and headers["access-control-allow-credentials"] == "true"
    assert "Authorization" in headers["access-control-allow-headers"]
    assert "POST" in headers["access-control-allow-methods"] and int(headers["access-control-max-age"]) > 0

    # Another title's KID: 403 JSON (with CORS, so the player can read it), no key.
    status, headers, body = lic.curl("-X", "POST", *auth, "--data", json.dumps({"kids": [kid1, kid2]}))
    assert status == 403 and json.loads(body)["error"] == "forbidden" and b'"k"' not in body
    assert headers["access-control-allow-origin"] == ORIGIN
    # No token: 401.
    status, _, body = lic.curl("-X", "POST", "--data", json.dumps({"kids": [kid1]}))
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    # A tampered token: 401.
    status, _, body = lic.curl("-X", "POST", "-H", f"Authorization: Bearer {token[:-3]}AAA",
                               "--data", json.dumps({"kids": [kid1]}))
    assert status == 401
    # Garbage body: 400.
    status, _, body = lic.curl("-X", "POST", *auth, "--data", "{not json")
    assert status == 400 and json.loads(body)["error"] == "bad_request"
    # A body over max_request_size (8 KiB): the app's 413 JSON.
    status, _, body = lic.curl("-X", "POST", *auth, "--data", json.dumps({"kids": [kid1], "pad": "x" * 20_000}))
    assert status == 413 and json.loads(body)["error"] == "payload_too_large"
    # 1 MB: over the HTTP core's max_body_size (64 KiB), refused by the core before the app.
    big = lic.folder / "big.json"
    big.write_bytes(b"{" + b" " * (1 << 20) + b"}")
    status, _, body = lic.curl("-X", "POST", *auth, "--data-binary", f"@{big}")
    assert status == 413

    lines = lic.audit()
    outcomes = [(a["outcome"], a.get("status")) for a in lines]
    assert outcomes == [("granted", None), ("refused", 403), ("refused", 401), ("refused", 401),
                        ("refused", 400), ("refused", 413)]
    assert lines[0]["user"] == "alice" and lines[0]["kids"] == [kid1] and lines[0]["titles"] == ["1"]
    assert lines[1]["kids"] == [kid1, kid2] and lines[2]["user"] is None
    text = (lic.folder / "var/licence/audit.log").read_text()
    assert key1 not in text and token not in text and token.split(".")[2] not in text
    health = httpx.get(f"http://127.0.0.1:{lic.admin}/healthz").json()
    assert health["granted"] == 1 and health["refused"] == 5 and health["keys"] == 2


def test_key_delivery_for_aes128_hls(licence):
    lic, path = licence
    out = cli(path, "keys", "new", "--title", "3", "--scheme", "aes128", "--show-key").splitlines()
    kid_b64, kid_hex, key_hex = out[0].split()[1], out[0].split()[2], out[1].split()[2]
    other_hex = cli(path, "keys", "new", "--title", "4").split()[2]
    token = cli(path, "entitle", "--user", "bob", "--title", "3", "--expires", "1h").strip()
    auth = ["-H", f"Authorization: Bearer {token}", "-H", f"Origin: {ORIGIN}"]

    status, headers, body = lic.curl(*auth, path=f"/keys/{kid_hex}")
    assert status == 200 and body == bytes.fromhex(key_hex)
    assert headers["content-type"] == "application/octet-stream" and headers["cache-control"] == "no-store"
    assert headers["access-control-allow-origin"] == ORIGIN
    # upper-case hex is the same KID
    status, _, body = lic.curl(*auth, path=f"/keys/{kid_hex.upper()}")
    assert status == 200 and body == bytes.fromhex(key_hex)
    # the preflight hls.js's key request gets (it carries Authorization)
    status, headers, _ = lic.curl("-X", "OPTIONS", "-H", f"Origin: {ORIGIN}", "-H", "Access-Control-Request-Method: GET",
                                  "-H", "Access-Control-Request-Headers: authorization", path=f"/keys/{kid_hex}")
    assert status == 204 and "GET" in headers["access-control-allow-methods"]
    assert "Authorization" in headers["access-control-allow-headers"]
    # another title's key: 403 and no key; no token: 401; an unknown KID: 404; POST: 405;
    # a KID that is not 32 hex digits: no such route
    status, headers, body = lic.curl(*auth, path=f"/keys/{other_hex}")
    assert status == 403 and json.loads(body)["error"] == "forbidden"
    assert headers["access-control-allow-origin"] == ORIGIN
    status, _, body = lic.curl(path=f"/keys/{kid_hex}")
    assert status == 401 and bytes.fromhex(key_hex) not in body
    status, _, body = lic.curl(*auth, path=f"/keys/{'0' * 32}")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    status, headers, _ = lic.curl("-X", "POST", *auth, path=f"/keys/{kid_hex}")
    assert status == 405 and "GET" in headers["allow"]
    status, _, _ = lic.curl(*auth, path=f"/keys/{kid_hex}00")
    assert status == 404

    lines = [a for a in lic.audit() if a["kids"] == [kid_b64] or a["user"] == "bob"]
    granted = [a for a in lines if a["outcome"] == "granted"]
    assert len(granted) == 2 and all(a["user"] == "bob" and a["type"] == "aes128-key" and a["titles"] == ["3"]
                                     for a in granted), lines
    assert [a["status"] for a in lines if a["outcome"] == "refused"] == [403, 401, 404, 405], lines
    assert key_hex not in (lic.folder / "var/licence/audit.log").read_text()


def _hs256_token(claims: dict, secret: bytes, kid: str | None) -> str:
    """An HS256 JWT made by hand (PyJWT refuses a PEM key as an HMAC secret, as it should)."""
    def part(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = f"{part(header)}.{part(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_es256_tokens_from_an_issuers_jwks(licence, issuer):
    lic, path = licence
    kid = cli(path, "keys", "new", "--title", "5").split()[1]
    health = f"http://127.0.0.1:{lic.admin}/healthz"
    deadline = time.monotonic() + 10
    while httpx.get(health).json()["token_keys"] < 2:  # the HS256 key and the JWKS's first key
        assert time.monotonic() < deadline, "the daemon never fetched the JWKS"
        time.sleep(0.05)
    assert issuer.fetches == 1
    body = json.dumps({"kids": [kid]})

    with httpx.Client(verify=ssl.create_default_context(cafile=lic.ca), base_url=f"https://127.0.0.1:{lic.port}") as c:
        def ask(token: str) -> int:
            return c.post("/licence", content=body, headers={"Authorization": f"Bearer {token}"}).status_code

        assert ask(issuer.token("issuer-a", "5", "carol")) == 200
        assert ask(issuer.token("issuer-a", "1", "carol")) == 403  # a verified token, another title

        # The issuer rotates: key a is withdrawn, key b published. A token under b names a kid
        # the daemon does not know yet: refused, and the refresh it triggers brings b in.
        old_a = issuer.published["issuer-a"]
        issuer.publish(**{"issuer-b": ec.generate_private_key(ec.SECP256R1())})
        token_b = issuer.token("issuer-b", "5", "dave")
        before, started = issuer.fetches, time.monotonic()
        statuses = []
        while not statuses or statuses[-1] != 200:
            assert time.monotonic() - started < 10, statuses
            statuses.append(ask(token_b))
            time.sleep(0.05)
        fetched = issuer.fetches - before
        # at least the one refresh, and no more than one per min interval however many 401s
        assert 1 <= fetched <= 1 + (time.monotonic() - started) // JWKS_MIN_REFRESH_S, (fetched, statuses)
        assert set(statuses[:-1]) <= {401}, statuses

        # A burst of tokens naming kids nobody published: all refused, at most one fetch.
        issuer.published["stranger"] = ec.generate_private_key(ec.SECP256R1())
        strangers = [issuer.token("stranger", "5", f"eve{i}") for i in range(20)]
        del issuer.published["stranger"]
        before, started = issuer.fetches, time.monotonic()
        assert {ask(t) for t in strangers} == {401}
        time.sleep(0.3)
        assert issuer.fetches - before <= 1 + (time.monotonic() - started) // JWKS_MIN_REFRESH_S

        # The withdrawn key no longer verifies anything (its kid is unknown now).
        issuer.published["issuer-a"] = old_a
        token_a = issuer.token("issuer-a", "5", "carol")
        del issuer.published["issuer-a"]
        assert ask(token_a) == 401

        # Algorithm confusion: HS256 with the issuer's public key (PEM, and its JWK's x) as the
        # HMAC secret, under b's kid and under none: refused.
        pub = issuer.published["issuer-b"].public_key()
        pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        now = int(time.time())
        claims = {"sub": "mallory", "titles": ["5"], "iat": now, "exp": now + 600, "jti": "forged"}
        for secret in (pem, pem.strip(), json.dumps(jwt.algorithms.ECAlgorithm.to_jwk(pub, as_dict=True)).encode()):
            for key_id in ("issuer-b", None):
                assert ask(_hs256_token(claims, secret, key_id)) == 401
        assert ask(token_b) == 200  # b itself still verifies

    granted = {(a["user"], tuple(a["titles"])) for a in lic.audit() if a["outcome"] == "granted"}
    assert {("carol", ("5",)), ("dave", ("5",))} <= granted
    assert not any(a["user"] in ("mallory", "eve0") for a in lic.audit() if a["outcome"] == "granted")


def test_trickled_body_is_cut_off(licence):
    lic, path = licence
    token = cli(path, "entitle", "--user", "mallory", "--title", "1", "--expires", "1h").strip()
    ctx = ssl.create_default_context(cafile=lic.ca)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", lic.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"POST /licence HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
                      + b"\r\nContent-Length: 4000\r\n\r\n")
            got = b""
            try:
                for _ in range(20):
                    s.sendall(b" ")
                    time.sleep(0.25)
            except OSError:
                pass
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except OSError:
                pass
    # A valid token, so the body is read: the core cuts the trickle (4 bytes/s, under the
    # configured 256 B/s) off with a 408 or a close, within its limits rather than at the
    # client's pace; the app never answers it.
    assert got.startswith(b"HTTP/1.1 408") or got == b"", got[:100]
    assert time.monotonic() - started < 8
    status, _, _ = lic.curl("-X", "OPTIONS", "-H", f"Origin: {ORIGIN}")
    assert status == 204
