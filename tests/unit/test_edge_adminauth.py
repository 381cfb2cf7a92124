"""Signed admin requests (edge/adminauth.py): what is accepted, and each way a request is refused."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from headwater.edge.adminauth import SCHEME, AdminAuthError, AdminKey, AdminVerifier, admin_key
from headwater.rpc.auth import ClusterSecret

SECRET = ClusterSecret.from_secret("c1", b"s" * 32)
KEY = admin_key(SECRET)
NOW = 1_767_290_400.0
BODY = b'{"paths":["/a/*"]}'


def refused(verifier: AdminVerifier, *args, now: float = NOW) -> AdminAuthError:
    with pytest.raises(AdminAuthError) as e:
        verifier.check(*args, now=now)
    return e.value


def test_a_signed_request_is_accepted_once():
    v = AdminVerifier(KEY)
    auth = KEY.authorization("POST", "/_hw/invalidate", BODY, now=NOW)
    assert auth.startswith(SCHEME + " ts=1767290400, nonce=")
    v.check("POST", "/_hw/invalidate", BODY, auth, now=NOW + 5)
    assert v.remembered() == 1
    e = refused(v, "POST", "/_hw/invalidate", BODY, auth, now=NOW + 6)
    assert e.http_status == 403 and "replay" in e.reason


@pytest.mark.parametrize("method,target,body", [
    ("GET", "/_hw/invalidate", BODY),        # another method
    ("POST", "/_hw/invalidate?x", BODY),     # another target
    ("POST", "/_hw/invalidate", BODY + b" "),  # another body
])
def test_any_change_to_the_request_breaks_the_signature(method, target, body):
    v = AdminVerifier(KEY)
    auth = KEY.authorization("POST", "/_hw/invalidate", BODY, now=NOW)
    e = refused(v, method, target, body, auth)
    assert e.http_status == 403 and "signature" in e.reason
    assert v.remembered() == 0  # an unauthentic request takes no place in the nonce memory


def test_another_secret_or_another_cluster_is_refused():
    other_secret = admin_key(ClusterSecret.from_secret("c1", b"t" * 32))
    other_cluster = admin_key(ClusterSecret.from_secret("c2", b"s" * 32))
    for key in (other_secret, other_cluster):
        e = refused(AdminVerifier(KEY), "POST", "/p", b"", key.authorization("POST", "/p", now=NOW))
        assert e.http_status == 403


def test_missing_or_malformed_credentials_are_401():
    v = AdminVerifier(KEY)
    for auth in (None, "", "Bearer abc", f"{SCHEME} ts=1, nonce=zz, sig=00", f"{SCHEME} " + "x" * 600):
        assert refused(v, "POST", "/p", b"", auth).http_status == 401


def test_a_timestamp_outside_the_window_is_refused_both_ways():
    v = AdminVerifier(KEY, window_s=60)
    for ts in (NOW - 61, NOW + 61):
        e = refused(v, "POST", "/p", b"", KEY.authorization("POST", "/p", now=ts))
        assert e.http_status == 403 and "timestamp" in e.reason
    v.check("POST", "/p", b"", KEY.authorization("POST", "/p", now=NOW - 59), now=NOW)


def test_the_nonce_memory_is_bounded_and_forgets_what_the_window_no_longer_allows():
    v = AdminVerifier(KEY, window_s=10, max_nonces=2)
    for i in range(2):
        v.check("POST", "/p", b"", KEY.authorization("POST", "/p", now=NOW, nonce=f"{i:032x}"), now=NOW)
    full = refused(v, "POST", "/p", b"", KEY.authorization("POST", "/p", now=NOW, nonce="f" * 32))
    assert full.http_status == 503
    v.check("POST", "/p", b"", KEY.authorization("POST", "/p", now=NOW + 11, nonce="f" * 32), now=NOW + 11)
    assert v.remembered() == 1


def test_without_a_secret_everything_is_refused():
    v = AdminVerifier(None, why_no_key="no secret here")
    e = refused(v, "POST", "/p", b"", KEY.authorization("POST", "/p", now=NOW))
    assert e.http_status == 403 and "no secret here" in e.reason


def test_the_admin_key_is_not_the_rpc_key_and_is_never_printed():
    assert KEY._key != SECRET.key
    assert KEY._key == hmac.new(SECRET.key, b"headwater admin request v1", hashlib.sha256).digest()
    assert KEY._key.hex() not in repr(KEY) and "c1" in repr(KEY)
    assert isinstance(KEY, AdminKey)
