"""[gateway] settings: TLS (both files or neither, each readable, relative to cluster.toml), the bucket cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headwater.config import ConfigError, loads

BASE = """\
[objstore.ec]
k = 1
m = 0

[[users]]
access_key = "testkey"
secret_key = "test-secret-key"

[gateway]
id = "s3"
port = 19000
admin_port = 19001
{tls}
[[metadata]]
id = "meta-1"
port = 19002
admin_port = 19003

[[storage]]
id = "storage-1"
port = 19004
admin_port = 19005
"""


def config(tmp_path: Path, tls: str):
    path = tmp_path / "cluster.toml"
    text = BASE.format(tls=tls)
    path.write_text(text)
    return path, text


def line_of(text: str, start: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(start))


@pytest.fixture
def pem(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "tls").mkdir()
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    return cert, key


def test_no_tls(tmp_path):
    path, text = config(tmp_path, "")
    g = loads(text, path=str(path), env={}).gateway
    assert g.tls_cert is None and g.tls_key is None


def test_both_files_relative_to_the_config(tmp_path, pem):
    path, text = config(tmp_path, 'tls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n')
    g = loads(text, path=str(path), env={}).gateway
    assert (g.tls_cert, g.tls_key) == (str(pem[0]), str(pem[1]))
    path, text = config(tmp_path, f'tls_cert = "{pem[0]}"\ntls_key = "{pem[1]}"\n')
    assert loads(text, path=str(path), env={}).gateway.tls_cert == str(pem[0])


@pytest.mark.parametrize("given,missing", [("tls_cert", "tls_key"), ("tls_key", "tls_cert")])
def test_one_without_the_other_names_key_and_line(tmp_path, pem, given, missing):
    path, text = config(tmp_path, f'{given} = "tls/cert.pem"\n')
    with pytest.raises(ConfigError) as info:
        loads(text, path=str(path), env={})
    assert info.value.key == f"gateway.{given}" and info.value.line == line_of(text, given)
    assert f"{path}:{info.value.line}: gateway.{given}: needs gateway.{missing} too" in str(info.value)


@pytest.mark.parametrize("which", ["tls_cert", "tls_key"])
def test_a_file_that_cannot_be_read(tmp_path, pem, which):
    names = {"tls_cert": "tls/cert.pem", "tls_key": "tls/key.pem", which: "tls/absent.pem"}
    path, text = config(tmp_path, f'tls_cert = "{names["tls_cert"]}"\ntls_key = "{names["tls_key"]}"\n')
    with pytest.raises(ConfigError) as info:
        loads(text, path=str(path), env={})
    assert info.value.key == f"gateway.{which}" and info.value.line == line_of(text, which)
    assert "cannot read" in str(info.value) and "absent.pem" in str(info.value)
    # a directory, and a file without read permission (when not root)
    names[which] = "tls"
    path, text = config(tmp_path, f'tls_cert = "{names["tls_cert"]}"\ntls_key = "{names["tls_key"]}"\n')
    with pytest.raises(ConfigError, match=f"gateway.{which}: cannot read"):
        loads(text, path=str(path), env={})
    if os.geteuid() != 0:
        target = pem[0] if which == "tls_cert" else pem[1]
        target.chmod(0)
        path, text = config(tmp_path, 'tls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n')
        with pytest.raises(ConfigError, match=f"gateway.{which}: cannot read"):
            loads(text, path=str(path), env={})


def test_bucket_cache_seconds(tmp_path):
    path, text = config(tmp_path, "")
    assert loads(text, path=str(path), env={}).gateway.bucket_cache_s == 1.0
    path, text = config(tmp_path, "bucket_cache_seconds = 0\n")
    assert loads(text, path=str(path), env={}).gateway.bucket_cache_s == 0.0
    for bad, why in (("-1", "negative"), ("11", "more than 10")):
        path, text = config(tmp_path, f"bucket_cache_seconds = {bad}\n")
        with pytest.raises(ConfigError) as info:
            loads(text, path=str(path), env={})
        assert info.value.key == "gateway.bucket_cache_seconds" and why in str(info.value)
        assert info.value.line == line_of(text, "bucket_cache_seconds")
