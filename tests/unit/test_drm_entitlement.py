"""Entitlement tokens (drm/licence/entitlement.py): signatures, time on an injected clock,
algorithm confusion, titles, replay."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from headwater.drm.errors import TooManyRequests, Unauthorized
from headwater.drm.licence.entitlement import ReplayCache, TokenVerifier, VerificationKey, sign_token

NOW = 1_700_000_000.0
HS = b"s" * 32
ES_PRIV = ec.generate_private_key(ec.SECP256R1())
ES_PUB = ES_PRIV.public_key()
ES_PUB_PEM = ES_PUB.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def claims(**kw):
    return {"sub": "alice", "titles": ["1"], "iat": int(NOW), "exp": int(NOW + 3600), "jti": "t1", **kw}


def verifier(keys, clock=None, **kw):
    return TokenVerifier(lambda: keys, clock=clock or Clock(), leeway_s=0, **kw)


HS_KEYS = [VerificationKey(kid="hs", alg="HS256", key=HS)]
ES_KEYS = [VerificationKey(kid="es", alg="ES256", key=ES_PUB)]


def test_hs256_and_es256_verify():
    ent = verifier(HS_KEYS).verify(sign_token(claims(device="tv-1"), HS, "HS256", kid="hs"))
    assert ent.user == "alice" and ent.titles == {"1"} and ent.device == "tv-1" and ent.jti == "t1"
    ent = verifier(ES_KEYS).verify(sign_token(claims(title=7, titles=None), ES_PRIV, "ES256", kid="es"))
    assert ent.titles == {"7"}


def test_expired_and_not_yet_valid():
    clock = Clock()
    v = verifier(HS_KEYS, clock)
    token = sign_token(claims(nbf=int(NOW + 60)), HS, "HS256", kid="hs")
    with pytest.raises(Unauthorized, match="not valid yet"):
        v.verify(token)
    clock.now = NOW + 60
    assert v.verify(token).user == "alice"
    clock.now = NOW + 3600
    with pytest.raises(Unauthorized, match="expired"):
        v.verify(token)


def test_exp_and_iat_required_and_lifetime_bounded():
    v = verifier(HS_KEYS, max_lifetime_s=7200)
    for missing in ("exp", "iat", "sub"):
        c = claims()
        del c[missing]
        with pytest.raises(Unauthorized):
            v.verify(sign_token(c, HS, "HS256", kid="hs"))
    with pytest.raises(Unauthorized, match="longer"):
        v.verify(sign_token(claims(exp=int(NOW + 86400)), HS, "HS256", kid="hs"))
    with pytest.raises(Unauthorized, match="future"):
        v.verify(sign_token(claims(iat=int(NOW + 600)), HS, "HS256", kid="hs"))


def test_rental_window_closes():
    clock = Clock()
    v = verifier(HS_KEYS, clock)
    token = sign_token(claims(rental_end=int(NOW + 100)), HS, "HS256", kid="hs")
    assert v.verify(token).rental_end == NOW + 100
    clock.now = NOW + 100
    with pytest.raises(Unauthorized, match="rental"):
        v.verify(token)


def test_tampered_signature_and_payload():
    token = sign_token(claims(), HS, "HS256", kid="hs")
    head, payload, sig = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps(claims(titles=["1", "2"])).encode()).rstrip(b"=").decode()
    for bad in (f"{head}.{forged}.{sig}", f"{head}.{payload}.{sig[:-2]}AA", token + "x"):
        with pytest.raises(Unauthorized):
            verifier(HS_KEYS).verify(bad)
    with pytest.raises(Unauthorized):
        verifier([VerificationKey(kid="hs", alg="HS256", key=b"t" * 32)]).verify(token)


def test_alg_none_refused():
    token = jwt.encode(claims(), None, algorithm="none")
    with pytest.raises(Unauthorized, match="not accepted"):
        verifier(HS_KEYS + ES_KEYS).verify(token)


def test_hs_es_confusion():
    """An HS256 token whose HMAC key is the ES256 public key (PEM) must not verify."""
    import hashlib
    import hmac

    def hs_with(key: bytes, kid: str) -> str:
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
        signing = f"{enc({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{enc(claims())}"
        sig = base64.urlsafe_b64encode(hmac.new(key, signing.encode(), hashlib.sha256).digest()).rstrip(b"=")
        return f"{signing}.{sig.decode()}"

    for keys in (ES_KEYS, ES_KEYS + HS_KEYS):
        for kid in ("es", "hs"):
            with pytest.raises(Unauthorized):
                verifier(keys).verify(hs_with(ES_PUB_PEM, kid))
    # and an ES256 token is never checked against an HS secret
    with pytest.raises(Unauthorized):
        verifier(HS_KEYS).verify(sign_token(claims(), ES_PRIV, "ES256", kid="hs"))


def test_unknown_kid_asks_for_a_refresh():
    asked = []
    v = TokenVerifier(lambda: ES_KEYS, clock=Clock(), on_unknown_kid=asked.append)
    with pytest.raises(Unauthorized):
        v.verify(sign_token(claims(), ES_PRIV, "ES256", kid="rotated"))
    assert asked == ["rotated"]


@pytest.mark.parametrize("bad", [{"titles": []}, {"titles": "1"}, {"titles": [{"a": 1}]}, {"titles": [True]},
                                 {"sub": ""}, {"sub": 5}, {"exp": "soon"}, {"device": 3}])
def test_bad_claims(bad):
    with pytest.raises(Unauthorized):
        verifier(HS_KEYS).verify(sign_token(claims(**bad), HS, "HS256", kid="hs"))


@pytest.mark.parametrize("token", ["", "a.b", "x" * 5000 + ".a.b", "a.b.c", "....", "ey.ey.ey"])
def test_garbage_tokens(token):
    with pytest.raises(Unauthorized):
        verifier(HS_KEYS).verify(token)


def test_replay_cache():
    cache = ReplayCache(2, leeway_s=0)
    cache.use("a", NOW + 10, NOW)
    with pytest.raises(Unauthorized, match="already used"):
        cache.use("a", NOW + 10, NOW + 5)
    with pytest.raises(Unauthorized, match="jti"):
        cache.use(None, NOW + 10, NOW)
    cache.use("b", NOW + 20, NOW)
    with pytest.raises(TooManyRequests):  # full of unexpired ids: refuse, never forget one
        cache.use("c", NOW + 20, NOW + 1)
    cache.use("c", NOW + 20, NOW + 10)  # "a" expired and was pruned
    assert len(cache) == 2
    cache.use("a", NOW + 30, NOW + 20.5)  # expired ids may come again (the token itself is dead)


def _resigned(header: dict, payload: bytes, *, pad: bool = False) -> str:
    import hashlib
    import hmac

    def enc(raw: bytes) -> str:
        text = base64.urlsafe_b64encode(raw).decode()
        return text if pad else text.rstrip("=")
    signing = f"{enc(json.dumps(header).encode())}.{enc(payload)}"
    return f"{signing}.{enc(hmac.new(HS, signing.encode(), hashlib.sha256).digest())}"


def test_compact_form_is_parsed_as_strictly_as_pyjwt():
    """The compact JWS is parsed here (not by jwt.decode): padded segments are accepted as PyJWT
    accepts them; stray bits, junk characters, extensions and non-object payloads are not."""
    head = {"alg": "HS256", "typ": "JWT", "kid": "hs"}
    good = json.dumps(claims()).encode()
    v = verifier(HS_KEYS)
    assert v.verify(_resigned(head, good, pad=True)).user == "alice"
    assert v.verify(_resigned(head, good)).titles
    token = sign_token(claims(), HS, "HS256", kid="hs")
    h, p, s = token.split(".")
    last = "AEIMQUYcgkosw048" if len(s) % 4 == 3 else "AQgw"
    assert s[-1] in last
    stray = s[:-1] + chr(ord(s[-1]) + 1)            # the same bytes with a low bit set: another spelling
    for bad in (f"{h}.{p}.{stray}", f"{h}.{p}!.{s}", f"{h}.{p}.{s}===", f"{h}.{p}.+{s[1:]}",
                f"{h} .{p}.{s}", f"{h}.{p}.{s}=="):
        with pytest.raises(Unauthorized):
            v.verify(bad)
    assert len(s) % 4 == 3 and v.verify(f"{h}.{p}.{s}=").user == "alice"   # padded to a multiple of 4
    for ext in ({"crit": ["exp"], "exp": 1}, {"b64": False, "crit": ["b64"]}, {"b64": "no"}):
        with pytest.raises(Unauthorized, match="extension"):
            v.verify(_resigned({**head, **ext}, good))
    for payload in (b"[1,2]", b"not json", b"\xff\xfe", b'"sub"'):
        with pytest.raises(Unauthorized, match="payload"):
            v.verify(_resigned(head, payload))


def test_header_cache_caches_no_verdict():
    """Many tokens share one header segment; the parsed header is reused, the signature and
    claims are checked for every token."""
    v = verifier(HS_KEYS)
    good = sign_token(claims(), HS, "HS256", kid="hs")
    h, p, s = good.split(".")
    forged = base64.urlsafe_b64encode(json.dumps(claims(sub="mallory")).encode()).rstrip(b"=").decode()
    assert v.verify(good).user
    for _ in range(3):
        with pytest.raises(Unauthorized, match="signature"):
            v.verify(f"{h}.{forged}.{s}")
        assert v.verify(good).user
    for i in range(200):                               # distinct headers: the table stays bounded
        with pytest.raises(Unauthorized):
            v.verify(_resigned({"alg": "HS256", "kid": "hs", "n": i}, b"[]"))
    assert len(v._headers) <= 64
