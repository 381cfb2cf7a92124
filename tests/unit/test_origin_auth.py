"""OAuth2 for the origin, sans-IO: RFC 9068 access tokens checked on a fake clock (typ, alg,
kid, iss, aud, exp, iat, nbf, scope), the built-in issuer's grant and its token request
parsing (RFC 6749 §2.3.1, §4.4, §5.2), and JWKS parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import quote_plus

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from headwater.clock import FakeClock
from headwater.origin.auth.issuer import ClientRegistry, Issuer, parse_token_request
from headwater.origin.auth.jwks import parse_jwks
from headwater.origin.auth.tokens import AccessKey, AccessTokenVerifier, bearer_token
from headwater.origin.config import ClientConfig
from headwater.origin.errors import (
    Forbidden,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    Unauthorized,
    UnsupportedGrantType,
    wire_of,
)

ISS = "https://127.0.0.1:8090"
AUD = "headwater-origin"
SECRET = "s3cret-of-creator-app-0123456789abcdef"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def clock():
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
def issuer():
    client = ClientConfig(id="creator-app", scopes=("upload", "titles:write"),
                          secret_sha256=hashlib.sha256(SECRET.encode()).digest())
    registry = ClientRegistry({"creator-app": (client, client.secret_sha256)})
    return Issuer(key=ec.generate_private_key(ec.SECP256R1()), issuer=ISS, audience=AUD, lifetime_s=600,
                  clients=registry)


@pytest.fixture
def verifier(issuer, clock):
    asked = []
    v = AccessTokenVerifier(lambda: [issuer.access_key], issuer=ISS, audience=AUD, clock=clock.time, leeway_s=5,
                            on_unknown_kid=asked.append)
    v.asked = asked
    return v


def grant(issuer, clock, scope="upload"):
    req = parse_token_request(None, FORM, f"grant_type=client_credentials&client_id=creator-app&"
                              f"client_secret={SECRET}&scope={scope}".encode())
    return issuer.grant(req, clock.time())


def test_issued_token_verifies_with_its_scopes(issuer, verifier, clock):
    doc = grant(issuer, clock, "upload")
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 600 and doc["scope"] == "upload"
    token = verifier.verify(doc["access_token"])
    assert token.subject == token.client_id == "creator-app" and token.scopes == {"upload"}
    token.require("upload")
    with pytest.raises(Forbidden) as e:
        token.require("titles:write")
    assert wire_of(e.value) == (403, "insufficient_scope")
    header = jwt.get_unverified_header(doc["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256" and header["kid"] == issuer.kid


def test_expiry_on_the_injected_clock(issuer, verifier, clock):
    token = grant(issuer, clock)["access_token"]
    clock.advance(600 + 4)  # within the leeway
    verifier.verify(token)
    clock.advance(2)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)


def test_future_tokens_are_refused(issuer, verifier, clock):
    token = issuer.mint("creator-app", ("upload",), clock.time() + 60)
    with pytest.raises(Unauthorized, match="future"):
        verifier.verify(token)


def _sign(issuer, claims, **header):
    base = {"iss": ISS, "aud": AUD, "sub": "creator-app", "client_id": "creator-app", "iat": 1_800_000_000,
            "exp": 1_800_000_600, "scope": "upload"}
    base.update(claims)
    base = {k: v for k, v in base.items() if v is not None}
    hdr = {"kid": issuer.kid, "typ": "at+jwt"}
    hdr.update(header)
    hdr = {k: v for k, v in hdr.items() if v is not None}
    return jwt.encode(base, issuer.key, algorithm="ES256", headers=hdr)


@pytest.mark.parametrize("claims,header,reason", [
    ({"iss": "https://evil.example"}, {}, "another issuer"),
    ({"aud": "someone-else"}, {}, "another audience"),
    ({"aud": ["a", "b"]}, {}, "another audience"),
    ({"exp": None}, {}, "'exp'"),
    ({"client_id": None}, {}, "client_id"),
    ({"scope": ["upload"]}, {}, "scope"),
    ({"nbf": 1_800_000_100}, {}, "not valid yet"),
    ({}, {"typ": "JWT"}, "at\\+jwt"),
    ({}, {"typ": None}, "at\\+jwt"),
    ({}, {"kid": None}, "kid"),
    ({}, {"kid": "other"}, "no ES256 key"),
    # Python's JSON reads Infinity and NaN: a token that would never expire, or never compare
    ({"exp": float("inf")}, {}, "'exp' claim is not a number"),
    ({"exp": float("nan")}, {}, "'exp' claim is not a number"),
    ({"exp": 10 ** 400}, {}, "'exp' claim is not a number"),
    ({"iat": float("nan")}, {}, "'iat' claim is not a number"),
    ({"nbf": float("-inf")}, {}, "'nbf' claim is not a number"),
    ({"exp": True}, {}, "'exp' claim is not a number"),
])
def test_claims_and_header_are_checked(issuer, verifier, claims, header, reason):
    with pytest.raises(Unauthorized, match=reason):
        verifier.verify(_sign(issuer, claims, **header))


def test_audience_in_a_list_is_accepted(issuer, verifier):
    assert verifier.verify(_sign(issuer, {"aud": ["x", AUD], "scope": "upload view"})).scopes == {"upload", "view"}


def test_unknown_kid_asks_for_a_refresh(issuer, verifier):
    with pytest.raises(Unauthorized):
        verifier.verify(_sign(issuer, {}, kid="rotated-key"))
    assert verifier.asked == ["rotated-key"]


def test_algorithm_confusion_and_none_are_refused(issuer, verifier):
    claims = {"iss": ISS, "aud": AUD, "sub": "x", "client_id": "x", "iat": 1_800_000_000, "exp": 1_800_000_600}
    # HS256 "signed" with the public key's JWK text: never tried, as no HS key exists.
    # (built by hand: PyJWT itself refuses to HMAC with key material.)
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    pub = json.dumps(issuer.jwks()["keys"][0]).encode()
    signing = b64(json.dumps({"alg": "HS256", "kid": issuer.kid, "typ": "at+jwt"}).encode()) + "." + \
        b64(json.dumps(claims).encode())
    forged = signing + "." + b64(hmac.new(pub, signing.encode(), hashlib.sha256).digest())
    with pytest.raises(Unauthorized, match="not accepted"):
        verifier.verify(forged)
    none = jwt.encode(claims, None, algorithm="none", headers={"kid": issuer.kid, "typ": "at+jwt"})
    with pytest.raises(Unauthorized, match="not a JWT|not accepted"):
        verifier.verify(none)
    other = ec.generate_private_key(ec.SECP256R1())
    wrong = jwt.encode(claims, other, algorithm="ES256", headers={"kid": issuer.kid, "typ": "at+jwt"})
    with pytest.raises(Unauthorized, match="signature"):
        verifier.verify(wrong)
    for junk in ("", "a.b", "x" * 9000, "!!.!!.!!"):
        with pytest.raises(Unauthorized):
            verifier.verify(junk)


def test_bearer_header():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(Unauthorized):
            bearer_token(bad)


def test_token_request_basic_and_body_auth(issuer, clock):
    basic = base64.b64encode(f"creator-app:{quote_plus(SECRET)}".encode()).decode()
    req = parse_token_request(f"Basic {basic}", FORM, b"grant_type=client_credentials")
    assert (req.client_id, req.client_secret, req.scopes) == ("creator-app", SECRET, None)
    # No scope asked: every scope the client has.
    assert issuer.grant(req, clock.time())["scope"] == "upload titles:write"
    with pytest.raises(InvalidGrant):  # both methods at once
        parse_token_request(f"Basic {basic}", FORM, f"grant_type=client_credentials&client_secret={SECRET}".encode())
    with pytest.raises(InvalidGrant):
        parse_token_request(None, "application/json", b"{}")
    with pytest.raises(InvalidGrant):
        parse_token_request(None, FORM, b"grant_type=client_credentials&grant_type=client_credentials")
    with pytest.raises(UnsupportedGrantType):
        parse_token_request(None, FORM, b"grant_type=password&username=a&password=b")
    with pytest.raises(InvalidClient):
        parse_token_request(None, FORM, b"grant_type=client_credentials")
    with pytest.raises(InvalidClient):
        parse_token_request("Basic !!!", FORM, b"grant_type=client_credentials")


def test_wrong_secret_unknown_client_and_scope(issuer, clock):
    for body in (b"grant_type=client_credentials&client_id=creator-app&client_secret=nope",
                 f"grant_type=client_credentials&client_id=ghost&client_secret={SECRET}".encode()):
        with pytest.raises(InvalidClient) as e:
            issuer.grant(parse_token_request(None, FORM, body), clock.time())
        assert wire_of(e.value) == (401, "invalid_client")
    with pytest.raises(InvalidScope):
        grant(issuer, clock, "view")


def test_jwks_and_metadata(issuer):
    keys = parse_jwks(json.dumps(issuer.jwks()).encode())
    assert [k.kid for k in keys] == [issuer.kid]
    meta = issuer.metadata(("upload",))
    assert meta["token_endpoint"] == f"{ISS}/oauth/token" and meta["jwks_uri"].endswith("/.well-known/jwks.json")


def test_jwks_parsing_keeps_only_usable_signing_keys():
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    doc = {"keys": [
        {**jwt.algorithms.ECAlgorithm.to_jwk(ec_pub, as_dict=True), "kid": "e1"},
        {**jwt.algorithms.RSAAlgorithm.to_jwk(rsa_pub, as_dict=True), "kid": "r1", "alg": "RS256"},
        {**jwt.algorithms.RSAAlgorithm.to_jwk(small, as_dict=True), "kid": "r-small"},
        {**jwt.algorithms.ECAlgorithm.to_jwk(ec_pub, as_dict=True), "kid": "enc", "use": "enc"},
        {**jwt.algorithms.ECAlgorithm.to_jwk(ec_pub, as_dict=True)},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"},
    ]}
    keys = parse_jwks(json.dumps(doc).encode())
    assert [(k.kid, k.alg) for k in keys] == [("e1", "ES256"), ("r1", "RS256")]
    assert len(parse_jwks(json.dumps({"keys": doc["keys"][:1] * 40}).encode(), max_keys=3)) == 3
    with pytest.raises(ValueError):
        parse_jwks(b'{"nokeys": 1}')
    with pytest.raises(ValueError):
        AccessKey(kid="x", alg="RS256", key=small)
