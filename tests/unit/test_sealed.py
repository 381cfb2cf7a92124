"""Secrets sealed at rest (headwater.sealed): round trips, and every way opening must refuse."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from headwater.config import ClusterConfig, ConfigError
from headwater.sealed import (FORMAT_VERSION, MAGIC, Sealer, SealedError, SealedFormatError, SealedKeyMismatch,
                              SealedTampered, cluster_secret_bytes, load_or_create, read_sealed, write_sealed)

SECRET = b"s" * 32
OTHER = b"o" * 32
PURPOSE = b"dns-key"


def test_round_trip_in_memory_and_every_seal_differs():
    s = Sealer(SECRET)
    a, b = s.seal(b"hello", PURPOSE), s.seal(b"hello", PURPOSE)
    assert a != b  # fresh salt and nonce each time
    assert a.startswith(MAGIC + bytes([FORMAT_VERSION]))
    assert b"hello" not in a
    assert s.open(a, PURPOSE) == s.open(b, PURPOSE) == b"hello"
    assert s.open(s.seal(b"", PURPOSE), PURPOSE) == b""


def test_round_trip_on_disk_with_mode_0600(tmp_path: Path):
    s = Sealer(SECRET)
    path = tmp_path / "keys" / "zone.key"
    write_sealed(path, b"k" * 100, s, PURPOSE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_sealed(path, s, PURPOSE) == b"k" * 100
    write_sealed(path, b"new", s, PURPOSE)  # replaced atomically
    assert read_sealed(path, s, PURPOSE) == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["zone.key"]  # no temporary files left


def test_wrong_secret_is_a_clear_error_never_garbage():
    blob = Sealer(SECRET).seal(b"payload", PURPOSE)
    with pytest.raises(SealedKeyMismatch, match="another cluster secret"):
        Sealer(OTHER, source="$X").open(blob, PURPOSE)


def test_another_purpose_does_not_open():
    blob = Sealer(SECRET).seal(b"payload", b"drm-key")
    with pytest.raises(SealedFormatError, match="sealed for 'drm-key', not 'dns-key'"):
        Sealer(SECRET).open(blob, PURPOSE)


@pytest.mark.parametrize("where", ["header", "body", "tag"])
def test_every_flipped_byte_is_refused(where: str):
    s = Sealer(SECRET)
    blob = s.seal(b"p" * 40, PURPOSE)
    head = len(blob) - 40 - 16
    positions = {"header": range(0, head), "body": range(head, head + 40), "tag": range(head + 40, len(blob))}
    for i in positions[where]:
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= bit
            with pytest.raises(SealedError):
                s.open(bytes(bad), PURPOSE)
    # A body or tag flip passes the header's check and fails the GCM tag: "altered".
    if where != "header":
        bad = bytearray(blob)
        bad[positions[where][0]] ^= 1
        with pytest.raises(SealedTampered, match="altered or damaged"):
            s.open(bytes(bad), PURPOSE)


def test_truncation_at_every_length_is_refused():
    s = Sealer(SECRET)
    blob = s.seal(b"payload", PURPOSE)
    for n in range(len(blob)):
        with pytest.raises(SealedError):
            s.open(blob[:n], PURPOSE)
    with pytest.raises(SealedFormatError, match="truncated"):
        s.open(blob[:40], PURPOSE)
    with pytest.raises(SealedFormatError, match="not a headwater sealed file"):
        s.open(b"-----BEGIN PRIVATE KEY-----", PURPOSE)
    with pytest.raises(SealedFormatError, match="format version 9"):
        s.open(MAGIC + b"\x09" + blob[9:], PURPOSE)


def test_a_file_others_can_read_is_refused(tmp_path: Path):
    s = Sealer(SECRET)
    path = tmp_path / "k"
    write_sealed(path, b"x", s, PURPOSE)
    os.chmod(path, 0o644)
    with pytest.raises(SealedError, match="too open.*chmod 600"):
        read_sealed(path, s, PURPOSE)


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        Sealer(b"short")


def test_load_or_create_creates_once_then_loads(tmp_path: Path):
    s = Sealer(SECRET)
    path = tmp_path / "k"
    calls = []

    def make() -> bytes:
        calls.append(1)
        return os.urandom(32)

    first, created = load_or_create(path, s, PURPOSE, make)
    again, created_again = load_or_create(path, s, PURPOSE, make)
    assert created and not created_again and first == again and len(calls) == 1
    with pytest.raises(SealedKeyMismatch):
        load_or_create(path, Sealer(OTHER), PURPOSE, make)  # never silently replaced


def _race(path: str, barrier, out) -> None:
    barrier.wait()
    value, created = load_or_create(Path(path), Sealer(SECRET), PURPOSE, lambda: os.urandom(32))
    out.put((value, created))


def test_concurrent_creators_end_up_with_one_secret(tmp_path: Path):
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier, out = ctx.Barrier(n), ctx.Queue()
    path = tmp_path / "keys" / "zone.key"
    procs = [ctx.Process(target=_race, args=(str(path), barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=20) for _ in range(n)]
    for p in procs:
        p.join(timeout=20)
        assert p.exitcode == 0
    assert len({value for value, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert read_sealed(path, Sealer(SECRET), PURPOSE) == results[0][0]
    assert [p.name for p in path.parent.iterdir()] == ["zone.key"]


def test_the_cluster_secret_comes_from_the_environment_or_the_file(tmp_path: Path):
    cfg = ClusterConfig(data_dir=tmp_path, secret_env="HW_SEAL_TEST")
    assert cluster_secret_bytes(cfg, env={"HW_SEAL_TEST": " " + "a" * 64 + "\n"}) == (b"a" * 64, "$HW_SEAL_TEST")
    with pytest.raises(ConfigError, match="HW_SEAL_TEST is not set"):
        cluster_secret_bytes(cfg, env={})
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_bytes(b"b" * 64 + b"\n")
    os.chmod(secret_file, 0o600)
    cfg = ClusterConfig(data_dir=tmp_path)  # neither set: <data_dir>/cluster.secret
    assert cluster_secret_bytes(cfg, env={}) == (b"b" * 64, str(secret_file))
    assert Sealer.from_config(cfg, env={}).open(Sealer(b"b" * 64).seal(b"v", PURPOSE), PURPOSE) == b"v"
    os.chmod(secret_file, 0o640)
    with pytest.raises(ConfigError, match="too open"):
        cluster_secret_bytes(cfg, env={})
