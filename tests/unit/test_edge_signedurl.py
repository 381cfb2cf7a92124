"""headwater.edge.signedurl: CloudFront signed URLs and cookies, against botocore's CloudFrontSigner."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest
from botocore.signers import CloudFrontSigner
from Crypto.Hash import SHA1
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.config import ConfigError, Reader
from headwater.edge import signedurl as su
from headwater.edge.signedurl import Denial

NOW = 1_700_000_000
KEY_ID = "K2JCJMDEHXQW5F"
HOST = "cdn.example.test:8081"


@pytest.fixture(scope="module")
def keys() -> tuple[RSA.RsaKey, RSA.RsaKey]:
    # 1024-bit keys keep the module fast; the format does not depend on the size.
    return RSA.generate(1024), RSA.generate(1024)


@pytest.fixture(scope="module")
def verifier(keys) -> su.Verifier:
    return su.Verifier({KEY_ID: keys[0].public_key().export_key()})


def botocore_signer(key: RSA.RsaKey, key_id: str = KEY_ID) -> CloudFrontSigner:
    return CloudFrontSigner(key_id, lambda message: pkcs1_15.new(key).sign(SHA1.new(message)))


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def check(verifier: su.Verifier, url: str, *, ip: str = "192.0.2.10", now: float = NOW,
          cookie: str | None = None) -> su.Access:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return verifier.verify(scheme=parts.scheme, host=parts.netloc, target=target, client_ip=ip,
                           now=now, cookie_header=cookie)


# --- botocore's URLs verify; ours match botocore's ------------------------------------------------

def test_botocore_canned_url_verifies_and_is_stripped(keys, verifier) -> None:
    url = f"http://{HOST}/titles/1/manifest.mpd?lang=en"
    signed = botocore_signer(keys[0]).generate_presigned_url(url, date_less_than=at(NOW + 3600))
    got = check(verifier, signed)
    assert got.allowed and got.denial is None and got.via == "url"
    assert got.target == "/titles/1/manifest.mpd?lang=en"
    assert got.key_id == KEY_ID and got.expires == NOW + 3600


def test_our_canned_url_is_byte_identical_to_botocores(keys) -> None:
    url = f"https://{HOST}/titles/1/seg-00042.m4s"
    theirs = botocore_signer(keys[0]).generate_presigned_url(url, date_less_than=at(NOW + 60))
    ours = su.sign_url(url, key_id=KEY_ID, private_key=keys[0], expires=NOW + 60)
    assert ours == theirs  # PKCS#1 v1.5 is deterministic


def test_botocore_custom_policy_with_wildcard_ip_and_start(keys, verifier) -> None:
    signer = botocore_signer(keys[0])
    policy = signer.build_policy(f"http://{HOST}/titles/1/*", at(NOW + 600),
                                 date_greater_than=at(NOW - 10), ip_address="192.0.2.0/24")
    signed = signer.generate_presigned_url(f"http://{HOST}/titles/1/seg-7.m4s?x=1", policy=policy)
    assert "Policy=" in signed and "Expires=" not in signed
    got = check(verifier, signed, ip="192.0.2.77")
    assert got.allowed and got.target == "/titles/1/seg-7.m4s?x=1" and got.expires == NOW + 600
    # The same grant for another file under the wildcard: swap the path, keep the parameters.
    other = signed.replace("/titles/1/seg-7.m4s?x=1&", "/titles/1/seg-8.m4s?")
    assert check(verifier, other, ip="192.0.2.77").allowed
    assert check(verifier, other, ip="::ffff:192.0.2.77").allowed  # dual-stack socket
    assert check(verifier, other, ip="192.0.3.1").denial is Denial.IP_NOT_ALLOWED
    assert check(verifier, other, ip="2001:db8::1").denial is Denial.IP_NOT_ALLOWED
    assert check(verifier, signed.replace("/titles/1/", "/titles/2/"), ip="192.0.2.77").denial \
        is Denial.RESOURCE_MISMATCH
    assert check(verifier, signed, ip="192.0.2.77", now=NOW - 10).denial is Denial.NOT_YET_VALID
    assert check(verifier, signed, ip="192.0.2.77", now=NOW + 600).denial is Denial.EXPIRED


def test_botocore_verifies_ours(keys) -> None:
    """Ours through botocore's policy bytes: the signature we make is over the same JSON."""
    url = f"http://{HOST}/a/b.mpd"
    ours = su.sign_url(url, key_id=KEY_ID, private_key=keys[0], expires=NOW + 5,
                       resource=f"http://{HOST}/a/*", ip_range="198.51.100.7")
    query = dict(p.split("=", 1) for p in urlsplit(ours).query.split("&"))
    policy = su.cf_b64decode(query["Policy"])
    expected = botocore_signer(keys[0]).build_policy(f"http://{HOST}/a/*", at(NOW + 5),
                                                     ip_address="198.51.100.7")
    assert policy == expected.encode()
    pkcs1_15.new(keys[0].public_key()).verify(SHA1.new(policy), su.cf_b64decode(query["Signature"]))


def test_sha256_hash_algorithm(keys, verifier) -> None:
    url = f"http://{HOST}/x"
    signed = su.sign_url(url, key_id=KEY_ID, private_key=keys[0], expires=NOW + 5, hash_algorithm="SHA256")
    assert signed.endswith("&Hash-Algorithm=SHA256")
    assert check(verifier, signed).allowed
    assert check(verifier, signed.replace("SHA256", "SHA1")).denial is Denial.BAD_SIGNATURE
    assert check(verifier, signed.replace("SHA256", "MD5")).denial is Denial.MALFORMED


# --- cookies ------------------------------------------------------------------------------------

def cookie_header(cookies: dict[str, str], extra: str = "session=abc") -> str:
    return "; ".join([extra, *(f"{k}={v}" for k, v in cookies.items())])


def test_botocore_policy_as_signed_cookies(keys, verifier) -> None:
    """botocore signs URLs only; its custom policy and signature set as cookies verify."""
    signer = botocore_signer(keys[0])
    policy = signer.build_policy(f"http://{HOST}/titles/9/*", at(NOW + 100))
    signature = pkcs1_15.new(keys[0]).sign(SHA1.new(policy.encode()))
    cookies = {"CloudFront-Policy": signer._url_b64encode(policy.encode()).decode(),
               "CloudFront-Signature": signer._url_b64encode(signature).decode(),
               "CloudFront-Key-Pair-Id": KEY_ID}
    got = check(verifier, f"http://{HOST}/titles/9/seg-1.m4s", cookie=cookie_header(cookies))
    assert got.allowed and got.via == "cookie"
    assert check(verifier, f"http://{HOST}/titles/8/seg-1.m4s",
                 cookie=cookie_header(cookies)).denial is Denial.RESOURCE_MISMATCH


def test_our_canned_and_custom_cookies(keys, verifier) -> None:
    canned = su.sign_cookies(f"http://{HOST}/one.mpd", key_id=KEY_ID, private_key=keys[0], expires=NOW + 9)
    assert set(canned) == {"CloudFront-Expires", "CloudFront-Signature", "CloudFront-Key-Pair-Id"}
    assert check(verifier, f"http://{HOST}/one.mpd", cookie=cookie_header(canned)).allowed
    assert check(verifier, f"http://{HOST}/two.mpd", cookie=cookie_header(canned)).denial \
        is Denial.BAD_SIGNATURE  # a canned policy names its URL: another URL is another policy
    custom = su.sign_cookies(f"http://{HOST}/v/*", key_id=KEY_ID, private_key=keys[0], expires=NOW + 9,
                             ip_range="203.0.113.0/24", hash_algorithm="SHA256")
    assert "CloudFront-Policy" in custom and custom["CloudFront-Hash-Algorithm"] == "SHA256"
    assert check(verifier, f"http://{HOST}/v/a/b", cookie=cookie_header(custom), ip="203.0.113.9").allowed
    assert check(verifier, f"http://{HOST}/v/a/b", cookie=cookie_header(custom),
                 ip="203.0.114.9").denial is Denial.IP_NOT_ALLOWED


def test_signed_url_wins_over_cookies(keys, verifier) -> None:
    good_cookies = su.sign_cookies(f"http://{HOST}/*", key_id=KEY_ID, private_key=keys[0], expires=NOW + 9)
    bad_url = f"http://{HOST}/f?Expires={NOW + 9}&Signature=AAAA&Key-Pair-Id={KEY_ID}"
    assert check(verifier, bad_url, cookie=cookie_header(good_cookies)).denial is Denial.BAD_SIGNATURE
    assert check(verifier, f"http://{HOST}/f", cookie=cookie_header(good_cookies)).allowed


def test_strip_signing_cookies() -> None:
    assert su.strip_signing_cookies("a=1; CloudFront-Policy=x; CloudFront-Signature=y; b=2") == "a=1; b=2"
    assert su.strip_signing_cookies("CloudFront-Key-Pair-Id=K") is None


# --- every failure reason ------------------------------------------------------------------------

def test_every_denial_reason(keys, verifier) -> None:
    base = f"http://{HOST}/p/file.m4s?q=1"
    good = su.sign_url(base, key_id=KEY_ID, private_key=keys[0], expires=NOW + 30)
    assert check(verifier, good).allowed

    assert check(verifier, base).denial is Denial.MISSING
    assert check(verifier, base, cookie="session=1").denial is Denial.MISSING
    # malformed: a parameter missing, doubled, both policies, bad base64, bad Expires, bad JSON
    assert check(verifier, good.replace(f"&Key-Pair-Id={KEY_ID}", "")).denial is Denial.MALFORMED
    assert check(verifier, good + "&Expires=1").denial is Denial.MALFORMED
    assert check(verifier, good + "&Policy=e30_").denial is Denial.MALFORMED
    assert check(verifier, good.replace("Signature=", "Signature=!")).denial is Denial.MALFORMED
    assert check(verifier, good.replace(f"Expires={NOW + 30}", "Expires=soon")).denial is Denial.MALFORMED
    assert check(verifier, good.replace(f"Key-Pair-Id={KEY_ID}", "Key-Pair-Id=a/b")).denial is Denial.MALFORMED
    not_json = su.cf_b64encode(b"{nope")
    assert check(verifier, f"{base}&Policy={not_json}&Signature=AAAA&Key-Pair-Id={KEY_ID}").denial \
        is Denial.MALFORMED
    for bad_policy in ({"Statement": []},
                       {"Statement": [{"Resource": "x"}]},
                       {"Statement": [{"Condition": {"DateLessThan": {"AWS:EpochTime": "1"}}}]},
                       {"Statement": [{"Condition": {"DateLessThan": {"AWS:EpochTime": 1}, "Foo": {}}}]},
                       {"Statement": [{"Condition": {"DateLessThan": {"AWS:EpochTime": 1},
                                                     "IpAddress": {"AWS:SourceIp": "not-an-ip"}}}]}):
        enc = su.cf_b64encode(json.dumps(bad_policy).encode())
        got = check(verifier, f"{base}&Policy={enc}&Signature=AAAA&Key-Pair-Id={KEY_ID}")
        assert got.denial is Denial.MALFORMED, bad_policy
    assert check(verifier, base, cookie="CloudFront-Signature=a; CloudFront-Signature=b").denial \
        is Denial.MALFORMED
    # unknown key, bad signature (signed by another key), expired (at the second), not yet valid
    assert check(verifier, good.replace(KEY_ID, "APKAOTHER")).denial is Denial.UNKNOWN_KEY
    other = su.sign_url(base, key_id=KEY_ID, private_key=keys[1], expires=NOW + 30)
    assert check(verifier, other).denial is Denial.BAD_SIGNATURE
    assert check(verifier, good, now=NOW + 29.999).allowed
    assert check(verifier, good, now=NOW + 30).denial is Denial.EXPIRED
    later = su.sign_url(base, key_id=KEY_ID, private_key=keys[0], expires=NOW + 30, starts=NOW + 10)
    assert check(verifier, later).denial is Denial.NOT_YET_VALID
    assert check(verifier, later, now=NOW + 10.5).allowed
    # ip, resource: a custom policy naming another address and another file
    ip_bound = su.sign_url(base, key_id=KEY_ID, private_key=keys[0], expires=NOW + 30, ip_range="192.0.2.1")
    assert check(verifier, ip_bound, ip="192.0.2.1").allowed
    assert check(verifier, ip_bound, ip="192.0.2.2").denial is Denial.IP_NOT_ALLOWED
    elsewhere = su.sign_url(base, key_id=KEY_ID, private_key=keys[0], expires=NOW + 30,
                            resource=f"http://{HOST}/other/*")
    assert check(verifier, elsewhere).denial is Denial.RESOURCE_MISMATCH
    for d in Denial:
        assert d.http_status == 403 and d.value.encode() in d.body() and d.message


def test_signature_is_checked_before_the_conditions(keys, verifier) -> None:
    """An expired URL with a forged signature says bad-signature, not expired."""
    good = su.sign_url(f"http://{HOST}/f", key_id=KEY_ID, private_key=keys[1], expires=NOW - 100)
    assert check(verifier, good).denial is Denial.BAD_SIGNATURE


def test_host_and_scheme_are_signed(keys, verifier) -> None:
    signed = su.sign_url(f"https://{HOST}/f", key_id=KEY_ID, private_key=keys[0], expires=NOW + 30)
    assert check(verifier, signed).allowed
    assert check(verifier, signed.replace("https://", "http://")).denial is Denial.BAD_SIGNATURE
    assert check(verifier, signed.replace(HOST, "evil.test")).denial is Denial.BAD_SIGNATURE


def test_unsigned_parameters_added_later_break_a_canned_url(keys, verifier) -> None:
    signed = su.sign_url(f"http://{HOST}/f", key_id=KEY_ID, private_key=keys[0], expires=NOW + 30)
    assert check(verifier, signed + "&extra=1").denial is Denial.BAD_SIGNATURE


def test_strip_keeps_other_parameters_in_order() -> None:
    t = "/a?z=1&Expires=5&b=2&Signature=x&Key-Pair-Id=K&Policy=p&Hash-Algorithm=SHA1&c"
    assert su.strip_signing_params(t) == "/a?z=1&b=2&c"
    assert su.strip_signing_params("/a?Expires=5&Signature=x&Key-Pair-Id=K") == "/a"
    assert su.strip_signing_params("/a") == "/a"


@pytest.mark.parametrize(("pattern", "url", "hit"), [
    ("http://h/*", "http://h/a/b?c=d", True),
    ("http*://h/x", "https://h/x", True),
    ("http://h/*game_download.zip*", "http://h/example_game_download.zip?license=yes", True),
    ("http://h/a?c", "http://h/abc", True),
    ("http://h/a?c", "http://h/ac", False),
    ("http://h/a", "http://h/a/", False),
    ("*", "", True),
    ("a*b*c", "a" * 50 + "c", False),
])
def test_resource_wildcards(pattern: str, url: str, hit: bool) -> None:
    assert su.resource_matches(pattern, url) is hit


def test_base64_must_be_canonical() -> None:
    data = b"\x01\x02\x03\x04"  # 8 chars, "AQIDBA__": the last data char carries 4 unused bits
    enc = su.cf_b64encode(data)
    assert enc == "AQIDBA__" and su.cf_b64decode(enc) == data
    with pytest.raises(ValueError):
        su.cf_b64decode("AQIDBB__")  # same bytes, other unused bits
    with pytest.raises(ValueError):
        su.cf_b64decode("AQIDBA")  # padding dropped
    with pytest.raises(ValueError):
        su.cf_b64decode("AQIDBA==")  # standard base64's padding: found by the tamper test


# --- tampering ------------------------------------------------------------------------------------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~/.?&=%*"


_signed_once: dict[str, str] = {}


def _tamper_base(key: RSA.RsaKey, which: str) -> str:
    """One signed URL per kind, made once (signing is the slow part)."""
    if which not in _signed_once:
        base = f"http://{HOST}/titles/1/seg-00042.m4s?r=720p"
        extra = {} if which == "canned" else {"starts": NOW - 5, "ip_range": "192.0.2.0/24"}
        _signed_once[which] = su.sign_url(base, key_id=KEY_ID, private_key=key, expires=NOW + 3600, **extra)
    return _signed_once[which]


def test_tamper_bases_verify(keys, verifier) -> None:
    for which in ("canned", "custom"):
        assert check(verifier, _tamper_base(keys[0], which)).allowed


@settings(max_examples=150, deadline=None)
@given(which=st.sampled_from(["canned", "custom"]), where=st.floats(0, 1, exclude_max=True),
       new=st.sampled_from(_ALPHABET))
def test_a_tampered_url_never_verifies(keys, verifier, which: str, where: float, new: str) -> None:
    """Change any one byte of the path, query, Expires, Policy, Signature or Key-Pair-Id."""
    signed = _tamper_base(keys[0], which)
    start = len(f"http://{HOST}")
    i = start + int(where * (len(signed) - start))
    if signed[i] == new:
        return
    tampered = signed[:i] + new + signed[i + 1:]
    got = check(verifier, tampered)
    assert not got.allowed, (i, signed[i], new, tampered)


def test_every_position_tampered(keys, verifier) -> None:
    """Exhaustively: every position after the host, three substitutions each (one of them the
    standard-base64 twin of a CloudFront character), for both kinds of policy."""
    twins = {"-": "+", "_": "=", "~": "/"}
    for which in ("canned", "custom"):
        signed = _tamper_base(keys[0], which)
        for i in range(len(f"http://{HOST}"), len(signed)):
            for new in {twins.get(signed[i], "A"), "z" if signed[i] != "z" else "y", "%"}:
                if new == signed[i]:
                    continue
                tampered = signed[:i] + new + signed[i + 1:]
                assert not check(verifier, tampered).allowed, (which, i, signed[i], new)


@settings(max_examples=100, deadline=None)
@given(flip=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_a_tampered_policy_or_signature_never_verifies(keys, verifier, flip: int, bit: int) -> None:
    """Flip one bit of the decoded policy or signature, re-encode it well-formed: still refused."""
    base = f"http://{HOST}/t/seg.m4s"
    policy = su.custom_policy(f"http://{HOST}/t/*", NOW + 60)
    sig = pkcs1_15.new(keys[0]).sign(SHA1.new(policy))
    blob = bytearray(policy + sig)
    blob[flip % len(blob)] ^= 1 << bit
    p, s = bytes(blob[:len(policy)]), bytes(blob[len(policy):])
    url = f"{base}?Policy={su.cf_b64encode(p)}&Signature={su.cf_b64encode(s)}&Key-Pair-Id={KEY_ID}"
    assert not check(verifier, url).allowed


# --- config ------------------------------------------------------------------------------------

def test_read_signing_keys(tmp_path, keys) -> None:
    (tmp_path / "k.pub.pem").write_bytes(keys[0].public_key().export_key())
    (tmp_path / "k.pem").write_bytes(keys[0].export_key())
    (tmp_path / "other.pem").write_bytes(keys[1].export_key())
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    text = '[[cdn.keys]]\nid = "K2JCJMDEHXQW5F"\npublic_key_file = "k.pub.pem"\nprivate_key_file = "k.pem"\n'
    r = Reader("cluster.toml", text, root=tmp_path)
    got = su.read_signing_keys(r, [{"id": KEY_ID, "public_key_file": "k.pub.pem", "private_key_file": "k.pem"}])
    assert got.ids() == (KEY_ID,) and got.get(KEY_ID).private_key_pem is not None
    assert su.Verifier(got).key_ids() == (KEY_ID,)
    bad = [
        ([{"id": KEY_ID}], "public_key_file: is required"),
        ([{"id": "a b", "public_key_file": "k.pub.pem"}], "not a key-pair id"),
        ([{"id": KEY_ID, "public_key_file": "missing.pem"}], "cannot read"),
        ([{"id": KEY_ID, "public_key_file": "junk.pem"}], "not an RSA key"),
        ([{"id": KEY_ID, "public_key_file": "k.pub.pem", "private_key_file": "other.pem"}], "not the pair"),
        ([{"id": KEY_ID, "public_key_file": "k.pub.pem"}, {"id": KEY_ID, "public_key_file": "k.pub.pem"}],
         "appears twice"),
        ([{"id": KEY_ID, "public_key_file": "k.pub.pem", "colour": "red"}], "unknown key"),
    ]
    for entries, message in bad:
        with pytest.raises(ConfigError, match=message):
            su.read_signing_keys(r, entries)
    assert su.read_signing_keys(r, None).keys == ()


def test_private_key_loading(keys) -> None:
    key = keys[1]
    assert su.load_private_key(key.export_key()).has_private()
    with pytest.raises(ValueError):
        su.load_private_key(key.public_key().export_key())
    assert base64.b64decode(su.cf_b64encode(b"\xfb\xff").translate(str.maketrans("-_~", "+=/"))) == b"\xfb\xff"


def test_sign_with_a_configured_key_and_parse_expiry(keys, verifier) -> None:
    key = su.SigningKey(id=KEY_ID, public_key_pem=keys[0].public_key().export_key(),
                        private_key_pem=keys[0].export_key())
    expires = su.parse_expiry("1h", now=NOW)
    assert expires == NOW + 3600
    assert check(verifier, su.sign_with_key(f"http://{HOST}/m.mpd", key, expires=expires)).allowed
    with pytest.raises(ValueError, match="no private_key_file"):
        su.sign_with_key("http://h/x", su.SigningKey(id="K", public_key_pem=b""), expires=expires)
    assert su.parse_expiry("90", now=NOW) == NOW + 90 and su.parse_expiry("2d", now=NOW) == NOW + 172800
    assert su.parse_expiry("@1767290400", now=NOW) == 1767290400
    for bad in ("", "1y", "-5m", "0s", "soon"):
        with pytest.raises(ValueError):
            su.parse_expiry(bad, now=NOW)


def test_auto_keys_are_missing_until_made_then_owner_only(tmp_path, keys) -> None:
    from headwater.edge.cdnkeys import make_key_file

    r = Reader("cluster.toml", "", root=tmp_path, data_dir=tmp_path / "var")
    entries = [{"id": "local", "private_key_file": "auto"}]
    missing = su.read_signing_keys(r, entries).get("local")
    assert missing.missing and missing.auto_file == tmp_path / "var" / "cdn" / "local.pem"
    assert su.Verifier(su.SigningKeys(keys=(missing,))).key_ids() == ()  # nothing signed with it passes
    with pytest.raises(ValueError, match="not made yet"):
        su.sign_with_key("http://h/x", missing, expires=NOW + 60)

    assert make_key_file(missing.auto_file, bits=1024) and not make_key_file(missing.auto_file, bits=1024)
    made = su.read_signing_keys(r, entries).get("local")
    assert not made.missing and made.private_key_pem == missing.auto_file.read_bytes()
    url = su.sign_with_key(f"http://{HOST}/m.mpd", made, expires=NOW + 60)
    assert check(su.Verifier(su.SigningKeys(keys=(made,))), url).allowed

    with pytest.raises(ConfigError, match="drop public_key_file"):
        su.read_signing_keys(r, [{"id": "local", "private_key_file": "auto", "public_key_file": "x.pem"}])
    missing.auto_file.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        su.read_signing_keys(r, entries)
    missing.auto_file.chmod(0o600)
    missing.auto_file.write_bytes(keys[0].public_key().export_key())
    with pytest.raises(ConfigError, match="not an RSA private key"):
        su.read_signing_keys(r, entries)


def test_a_grant_is_checked_once_its_conditions_every_time(keys) -> None:
    """The segment requests of one player carry one grant: RSA once, then the remembered verdict;
    expiry, resource and a forged signature are still judged on every request."""
    verifier = su.Verifier({KEY_ID: keys[0].public_key().export_key()}, cache_entries=2)

    def grant(key, expires: int = NOW + 300) -> str:
        return su.sign_url(f"http://{HOST}/x", key_id=KEY_ID, private_key=key, expires=expires,
                           resource=f"http://{HOST}/titles/1/v5/*").split("?", 1)[1]

    query = grant(keys[0])
    for n in range(1, 4):
        assert check(verifier, f"http://{HOST}/titles/1/v5/seg-{n}.m4s?{query}").allowed
    assert (verifier.signature_checks, verifier.signature_cache_hits) == (1, 2)
    assert check(verifier, f"http://{HOST}/titles/1/v5/seg-1.m4s?{query}", now=NOW + 300).denial is Denial.EXPIRED
    assert check(verifier, f"http://{HOST}/titles/2/v5/seg-1.m4s?{query}").denial is Denial.RESOURCE_MISMATCH
    # The same policy signed by another key: checked, refused, never remembered.
    forged = grant(keys[1])
    assert forged.split("&")[0] == query.split("&")[0]
    for _ in range(2):
        assert check(verifier, f"http://{HOST}/titles/1/v5/seg-1.m4s?{forged}").denial is Denial.BAD_SIGNATURE
    assert verifier.signature_checks == 3
    # Bounded: two other grants push the first out, and it is checked again.
    for extra in (1, 2):
        assert check(verifier, f"http://{HOST}/titles/1/v5/seg-1.m4s?{grant(keys[0], NOW + 300 + extra)}").allowed
    checks = verifier.signature_checks
    assert check(verifier, f"http://{HOST}/titles/1/v5/seg-1.m4s?{query}").allowed
    assert verifier.signature_checks == checks + 1
