"""`bench drm`'s pure parts: ``openssl speed -mr`` parsing, the licence daemon's generated
cluster.toml (read by our config loader), the wrk Lua script, a row's figures. The peers'
command lines are run in tests/functional/test_bench_drm.py."""

from __future__ import annotations

import json
import re

import pytest

from headwater.bench import drm as bench_drm
from headwater.config import loads

# `openssl speed -evp aes-128-ctr -seconds 1 -bytes 16384 -mr` (OpenSSL 3.0), stderr dropped.
OPENSSL_MR = """\
+DT:AES-128-CTR:1:16384
+R:409600:AES-128-CTR:1.000000
+H:16384
+F:25:AES-128-CTR:6711159466.67
"""

OPENSSL_ALL_SIZES = "+H:16:64:256:1024:8192:16384\n+F:25:AES-128-CTR:543241066.67:1676680228.57:6711159466.67\n"


def test_parse_openssl_speed_takes_the_largest_block():
    assert bench_drm.parse_openssl_speed(OPENSSL_MR) == pytest.approx(6711159466.67)
    assert bench_drm.parse_openssl_speed(OPENSSL_ALL_SIZES) == pytest.approx(6711159466.67)
    with pytest.raises(ValueError):
        bench_drm.parse_openssl_speed("Doing aes-128-ctr for 1s on 16384 size blocks\n")


def test_licence_cluster_toml_is_a_valid_licence_daemon(tmp_path):
    text = bench_drm.licence_cluster_toml(tmp_path / "var", port=18443, admin_port=19443)
    node = loads(text, path=str(tmp_path / "cluster.toml")).licence
    assert (node.port, node.admin_port, node.tls_cert) == (18443, 19443, "auto")
    assert not node.rate_limits.enabled          # one load generator is one client
    assert [(k.id, k.alg, k.secret) for k in node.tokens.keys] == [("bench", "HS256", "sealed")]


def test_wrk_script_posts_the_token_and_one_kid():
    token, kid = "eyJh.eyJz.c2ln", "AAECAwQFBgcICQoLDA0ODw"
    script = bench_drm.wrk_licence_script(token, kid)
    fields = dict(re.findall(r'^wrk\.(\w+) = (".*")$', script, re.M))
    assert json.loads(fields["method"]) == "POST" and json.loads(fields["path"]) == "/licence"
    assert json.loads(json.loads(fields["body"])) == {"kids": [kid], "type": "temporary"}
    headers = dict(re.findall(r'^wrk\.headers\["([\w-]+)"\] = (".*")$', script, re.M))
    assert json.loads(headers["Authorization"]) == f"Bearer {token}"
    assert json.loads(headers["Content-Type"]) == "application/json"


def test_row_figures():
    row = bench_drm.Row(who="ours", scheme="cenc", input_bytes=50_000_000, seconds=[2.0, 0.5, 1.0],
                        cpu_seconds=[0.4, 0.25])
    assert row.best_mb_s == 100.0 and row.best_mb_per_cpu_s == 200.0
