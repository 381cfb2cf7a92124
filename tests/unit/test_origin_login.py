"""Sign-in for people, sans-IO: PKCE (RFC 7636, its appendix B example), the sign-in request's
checks, single-use expiring codes in a bounded store, the authorization-code token request and
grant, password checks (scrypt and sealed), bounded attempts, and ``[[origin.users]]``."""

from __future__ import annotations

import hashlib

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from headwater.clock import FakeClock
from headwater.config import ConfigError, loads
from headwater.origin.auth.issuer import ClientRegistry, Issuer, parse_token_request
from headwater.origin.auth.login import (
    CODE_TTL_S,
    PUBLIC_CLIENT,
    CodeStore,
    LoginThrottle,
    User,
    UserDirectory,
    check_scrypt,
    hash_password,
    parse_authorize,
    parse_form,
    s256,
)
from headwater.origin.config import SCOPES
from headwater.origin.errors import (
    BadAuthorizationCode,
    BadAuthorizeRequest,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    LoginFailed,
    RateLimited,
    wire_of,
)

SITE = "http://127.0.0.1:8090"
# RFC 7636 appendix B.
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
FORM = "application/x-www-form-urlencoded"


def _params(**over: str) -> dict[str, str]:
    base = {"response_type": "code", "client_id": PUBLIC_CLIENT, "redirect_uri": f"{SITE}/signed-in",
            "code_challenge": CHALLENGE, "code_challenge_method": "S256", "state": "xyz"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_s256_is_rfc_7636_appendix_b():
    assert s256(VERIFIER) == CHALLENGE


def test_a_good_sign_in_request_is_parsed():
    req = parse_authorize(_params(scope="view upload"), SITE, SCOPES)
    assert req.redirect_uri == f"{SITE}/signed-in" and req.code_challenge == CHALLENGE and req.state == "xyz"
    assert req.scopes == ("view", "upload")
    assert parse_authorize(_params(), SITE, SCOPES).scopes is None


@pytest.mark.parametrize("over", [
    {"redirect_uri": "https://evil.example/signed-in"},
    {"redirect_uri": "http://127.0.0.1:8091/signed-in"},  # another port is another site
    {"redirect_uri": "https://127.0.0.1:8090/signed-in"},  # another scheme too
    {"redirect_uri": f"{SITE}//evil.example/"},
    {"redirect_uri": "http://user@127.0.0.1:8090/"},
    {"redirect_uri": "/signed-in"},
    {"redirect_uri": None},
    {"client_id": "creator-app"},
    {"response_type": "token"},
    {"code_challenge_method": "plain"},
    {"code_challenge_method": None},
    {"code_challenge": CHALLENGE[:-1]},
    {"code_challenge": CHALLENGE[:-1] + "!"},
    {"code_challenge": None},
    {"state": "x" * 257},
    {"state": "a b"},
])
def test_a_bad_sign_in_request_is_refused(over):
    with pytest.raises(BadAuthorizeRequest) as e:
        parse_authorize(_params(**over), SITE, SCOPES)
    assert wire_of(e.value) == (400, "invalid_request")


def test_unknown_scopes_are_refused():
    with pytest.raises(InvalidScope):
        parse_authorize(_params(scope="view admin"), SITE, SCOPES)
    with pytest.raises(InvalidScope):
        parse_authorize(_params(scope=" "), SITE, SCOPES)


def test_forms_are_bounded():
    assert parse_form(b"a=1&b=%C3%A9") == {"a": "1", "b": "\u00e9"}
    for bad in (b"a=1&a=2", b"x=" + b"y" * 5000, "&".join(f"f{i}=1" for i in range(17)).encode(), b"a=\xff"):
        with pytest.raises(BadAuthorizeRequest):
            parse_form(bad)


def test_a_code_is_single_use_and_bound_to_its_verifier_and_redirect():
    codes = CodeStore()
    req = parse_authorize(_params(), SITE, SCOPES)
    code = codes.issue(user="ada", scopes=("view",), request=req, now=100.0)
    grant = codes.redeem(code=code, redirect_uri=req.redirect_uri, verifier=VERIFIER, now=101.0)
    assert grant.user == "ada" and grant.scopes == ("view",)
    with pytest.raises(BadAuthorizationCode):  # used
        codes.redeem(code=code, redirect_uri=req.redirect_uri, verifier=VERIFIER, now=101.0)
    for kwargs in ({"verifier": "A" * 43}, {"verifier": "short"}, {"redirect_uri": f"{SITE}/other"}):
        code = codes.issue(user="ada", scopes=("view",), request=req, now=100.0)
        args = {"code": code, "redirect_uri": req.redirect_uri, "verifier": VERIFIER, "now": 101.0, **kwargs}
        with pytest.raises(BadAuthorizationCode) as e:
            codes.redeem(**args)
        assert wire_of(e.value) == (400, "invalid_grant")
        with pytest.raises(BadAuthorizationCode):  # a failed try spends the code too
            codes.redeem(code=code, redirect_uri=req.redirect_uri, verifier=VERIFIER, now=101.0)


def test_a_code_expires():
    codes = CodeStore()
    req = parse_authorize(_params(), SITE, SCOPES)
    code = codes.issue(user="ada", scopes=("view",), request=req, now=100.0)
    with pytest.raises(BadAuthorizationCode):
        codes.redeem(code=code, redirect_uri=req.redirect_uri, verifier=VERIFIER, now=100.0 + CODE_TTL_S)


def test_outstanding_codes_are_bounded():
    codes = CodeStore(max_codes=3)
    req = parse_authorize(_params(), SITE, SCOPES)
    issued = [codes.issue(user="ada", scopes=("view",), request=req, now=100.0 + i) for i in range(5)]
    assert len(codes) == 3 and codes.dropped == 2
    with pytest.raises(BadAuthorizationCode):  # the oldest went first
        codes.redeem(code=issued[0], redirect_uri=req.redirect_uri, verifier=VERIFIER, now=105.0)
    assert codes.redeem(code=issued[4], redirect_uri=req.redirect_uri, verifier=VERIFIER, now=105.0).user == "ada"
    # Expired ones are dropped as new ones come, not counted as dropped.
    codes.issue(user="ada", scopes=("view",), request=req, now=1000.0)
    assert len(codes) == 1 and codes.dropped == 2


def test_the_token_request_of_the_code_grant():
    body = (f"grant_type=authorization_code&code=abc&client_id={PUBLIC_CLIENT}"
            f"&redirect_uri=http%3A%2F%2F127.0.0.1%3A8090%2Fsigned-in&code_verifier={VERIFIER}").encode()
    req = parse_token_request(None, FORM, body)
    assert (req.grant, req.code, req.redirect_uri, req.code_verifier) == \
        ("authorization_code", "abc", f"{SITE}/signed-in", VERIFIER)
    with pytest.raises(InvalidClient):  # a public client sends no secret
        parse_token_request("Basic eDp5", FORM, body)
    with pytest.raises(InvalidClient):
        parse_token_request(None, FORM, body + b"&client_secret=x")
    with pytest.raises(InvalidClient):
        parse_token_request(None, FORM, body.replace(PUBLIC_CLIENT.encode(), b"creator-app"))
    with pytest.raises(InvalidGrant):
        parse_token_request(None, FORM, body.replace(b"&code_verifier=", b"&x="))


def test_the_issuer_redeems_a_code_for_a_users_token():
    clock = FakeClock(start=1_800_000_000.0)
    issuer = Issuer(key=ec.generate_private_key(ec.SECP256R1()), issuer=SITE, audience="headwater-origin",
                    lifetime_s=600, clients=ClientRegistry({}))
    req = parse_authorize(_params(), SITE, SCOPES)
    code = issuer.codes.issue(user="ada", scopes=("upload", "view"), request=req, now=clock.time())
    body = (f"grant_type=authorization_code&code={code}&client_id={PUBLIC_CLIENT}"
            f"&redirect_uri=http%3A%2F%2F127.0.0.1%3A8090%2Fsigned-in&code_verifier={VERIFIER}").encode()
    doc = issuer.grant(parse_token_request(None, FORM, body), clock.time())
    assert doc["scope"] == "upload view" and doc["token_type"] == "Bearer"
    claims = jwt.decode(doc["access_token"], issuer.key.public_key(), algorithms=["ES256"],
                        audience="headwater-origin", options={"verify_iat": False, "verify_exp": False})
    assert claims["sub"] == "ada" and claims["client_id"] == PUBLIC_CLIENT and claims["scope"] == "upload view"
    with pytest.raises(BadAuthorizationCode):  # once only
        issuer.grant(parse_token_request(None, FORM, body), clock.time())
    meta = issuer.metadata(SCOPES)
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "authorization_code" in meta["grant_types_supported"]


def test_passwords_by_scrypt_and_sealed():
    hashed = hash_password("hunter2 but longer", log_n=10)
    assert check_scrypt(hashed)[:3] == (10, 8, 1)
    sealed = "random-sealed-password-0123456789"
    users = UserDirectory({"ada": User(name="ada", scopes=("upload",), scrypt=hashed),
                           "vic": User(name="vic", scopes=("view",), sha256=hashlib.sha256(sealed.encode()).digest())})
    assert users.verify("ada", "hunter2 but longer").name == "ada"
    assert users.verify("vic", sealed).scopes == ("view",)
    for name, password in (("ada", "hunter2"), ("vic", sealed + "x"), ("nobody", "x"), ("ada", "x" * 300),
                           ("a/b", "x"), ("", "")):
        with pytest.raises(LoginFailed) as e:
            users.verify(name, password)
        assert str(e.value) == "unknown user or wrong password"  # one answer for all
    for bad in ("scrypt$9$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43, "scrypt$21$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
                "bcrypt$x", hashed.replace("$8$", "$99$")):
        with pytest.raises(ValueError):
            check_scrypt(bad)


def test_attempts_per_user_are_bounded():
    throttle = LoginThrottle(attempts=3, refill_s=60)
    for _ in range(3):
        throttle.check("ada", 0.0)
    with pytest.raises(RateLimited) as e:
        throttle.check("ada", 1.0)
    assert e.value.retry_after_s == 59 and wire_of(e.value) == (429, "too_many_requests")
    throttle.check("vic", 1.0)  # another user's budget is their own
    throttle.check("ada", 61.0)  # one back a minute later
    with pytest.raises(RateLimited):
        throttle.check("ada", 62.0)
    assert throttle.refused == 2


CLUSTER = """
[cluster]
name = "t"
[origin]
{users}
"""


def test_users_in_cluster_toml():
    hashed = hash_password("pw-pw-pw-pw", log_n=10)
    cfg = loads(CLUSTER.format(users=f"""
[[origin.users]]
name = "ada"
scopes = ["upload", "view"]
password_scrypt = "{hashed}"
[[origin.users]]
name = "vic"
scopes = ["view"]
password = "sealed"
"""))
    ada, vic = cfg.origin.users
    assert (ada.name, ada.scopes, ada.password_scrypt, ada.sealed) == ("ada", ("upload", "view"), hashed, False)
    assert vic.sealed and vic.password_scrypt is None
    for users, key in (('name = "x"\nscopes = ["view"]\npassword = "hunter2"', "password"),
                       ('name = "x"\nscopes = ["view"]', "password"),
                       ('name = "x"\nscopes = ["admin"]\npassword = "sealed"', "scopes"),
                       ('name = "x y"\nscopes = ["view"]\npassword = "sealed"', "name"),
                       ('name = "x"\nscopes = ["view"]\npassword_scrypt = "plain"', "password_scrypt")):
        with pytest.raises(ConfigError) as e:
            loads(CLUSTER.format(users="[[origin.users]]\n" + users))
        assert key in str(e.value), str(e.value)
    with pytest.raises(ConfigError):  # a user named as a client: one sub, two owners
        loads(CLUSTER.format(users='[[origin.clients]]\nid = "x"\nscopes = ["view"]\nsecret = "sealed"\n'
                                   '[[origin.users]]\nname = "x"\nscopes = ["view"]\npassword = "sealed"'))
