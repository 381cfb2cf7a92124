"""``[licence]`` in cluster.toml (drm/config.py): the shipped defaults and errors naming the key."""

from __future__ import annotations

import os

import pytest

from headwater.config import ConfigError, load, loads

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "cluster.toml")


def test_shipped_config():
    node = load(SHIPPED).licence
    assert (node.id, node.port, node.admin_port, node.tls_cert) == ("licence", 8443, 9443, "auto")
    assert node.tokens.keys[0].alg == "HS256" and node.tokens.keys[0].secret == "sealed"
    assert node.policy.default.types == {"temporary"} and node.needs_cluster_secret
    assert node.rpc_port == 7443 and node.port_keys == ("port", "admin_port", "rpc_port")


def test_the_key_rpc_is_off_unless_a_port_is_given():
    node = loads('[licence]\ntls = false\n').licence
    assert node.rpc_port is None and node.port_keys == ("port", "admin_port") and not node.needs_cluster_secret
    node = loads('[licence]\ntls = false\nrpc_port = 7000\n').licence
    assert node.rpc_port == 7000 and node.needs_cluster_secret  # its callers prove the cluster secret


def test_minimal_and_title_policies():
    node = loads('[licence]\ntls = false\n[licence.policy]\nsingle_use = true\n'
                 '[[licence.titles]]\ntitle = 7\ntypes = ["temporary", "persistent-license"]\n').licence
    assert node.tls_cert is None and node.port == 8443 and node.kek_file.name == "kek"
    assert node.policy.for_title("7").single_use and "persistent-license" in node.policy.for_title("7").types
    assert node.policy.for_title("8").types == {"temporary"}


def test_jwks_refresh_bounds():
    text = '[licence]\ntls = false\n[[licence.tokens.keys]]\nid = "i"\nalg = "ES256"\njwks_url = "https://issuer/jwks"\n'
    key = loads(text).licence.tokens.keys[0]
    assert (key.jwks_refresh_s, key.jwks_min_refresh_s) == (300.0, 30.0)
    key = loads(text + "jwks_min_refresh_seconds = 2\n").licence.tokens.keys[0]
    assert key.jwks_min_refresh_s == 2



def test_a_partial_limits_table_keeps_the_licence_servers_own_defaults():
    from headwater.drm.config import LICENCE_HTTP_LIMITS

    limits = loads('[licence]\ntls = false\n[licence.limits]\nbody_timeout_seconds = 5\n').licence.limits
    assert limits.body_timeout_s == 5
    assert (limits.max_header_bytes, limits.max_body_bytes, limits.idle_timeout_s) == (
        LICENCE_HTTP_LIMITS.max_header_bytes, LICENCE_HTTP_LIMITS.max_body_bytes, LICENCE_HTTP_LIMITS.idle_timeout_s)

@pytest.mark.parametrize("text,key", [
    ('[licence]\ntls = false\ntls_cert = "auto"\ntls_key = "auto"\n', "licence.tls"),
    ('[licence]\nkek_file = "k"\nkek_env = "K"\n', "licence.kek_env"),
    ('[licence]\nkek_env = "1BAD"\n', "licence.kek_env"),
    ('[licence]\nmax_kids = 0\n', "licence.max_kids"),
    ('[licence]\nrpc_port = 0\n', "licence.rpc_port"),
    ('[licence]\nrpc_port = "7443"\n', "licence.rpc_port"),
    ('[licence]\nrpc_port = 9443\n', "licence.rpc_port"),
    ('[licence]\nallowed_origins = ["player.example"]\n', "licence.allowed_origins"),
    ('[licence]\nsurprise = 1\n', "licence.surprise"),
    ('[[licence.tokens.keys]]\nid = "a"\nalg = "none"\n', "licence.tokens.keys[0].alg"),
    ('[[licence.tokens.keys]]\nid = "a"\nalg = "HS256"\nsecret = "hunter2"\n', "licence.tokens.keys[0].secret"),
    ('[[licence.tokens.keys]]\nid = "a"\nalg = "HS256"\njwks_url = "https://x/"\n', "licence.tokens.keys[0].alg"),
    ('[[licence.tokens.keys]]\nid = "a"\nalg = "ES256"\njwks_url = "https://x/"\njwks_min_refresh_seconds = 0\n',
     "licence.tokens.keys[0].jwks_min_refresh_seconds"),
    ('[[licence.tokens.keys]]\nid = "a"\nalg = "ES256"\nsecret = "sealed"\n', "licence.tokens.keys[0].alg"),
    ('[licence.policy]\ntypes = ["forever"]\n', "licence.policy.types"),
    ('[[licence.titles]]\ntitle = "1"\n[[licence.titles]]\ntitle = "1"\n', "licence.titles[1].title"),
])
def test_errors_name_the_key(text, key):
    with pytest.raises(ConfigError) as e:
        loads(text if text.startswith("[licence]") else "[licence]\n" + text, path="cluster.toml")
    assert e.value.key == key, str(e.value)
