"""The RPC handshake without sockets, and where the cluster secret comes from."""

from __future__ import annotations

import os
import stat

import msgpack
import pytest

from headwater.config import ClusterConfig, ConfigError, loads
from headwater.rpc import auth
from headwater.rpc.auth import (ClientHandshake, ClusterSecret, HandshakeFailed, HandshakeRefused, ServerHandshake,
                                cluster_secret, ensure_cluster_secret)
from headwater.rpc.frame import encode_frame, request_header

KEY = ClusterSecret.from_secret("c1", b"k" * 32)


def exchange(client: ClientHandshake, server: ServerHandshake) -> None:
    """Pass bytes back and forth until both are done or one raises."""
    for _ in range(4):
        server.receive_data(client.data_to_send()) if not server.established else None
        out = server.data_to_send()
        if out:
            client.receive_data(out)
        if client.established and server.established:
            return


def test_both_sides_prove_the_secret():
    c, s = ClientHandshake(KEY), ServerHandshake(KEY)
    exchange(c, s)
    assert c.established and s.established
    assert c.unused_data() == s.unused_data() == b""


def test_a_different_secret_is_caught_by_the_client_which_tells_the_server():
    c, s = ClientHandshake(KEY), ServerHandshake(ClusterSecret.from_secret("c1", b"x" * 32))
    s.receive_data(c.data_to_send())
    with pytest.raises(HandshakeFailed, match="server did not prove"):
        c.receive_data(s.data_to_send())
    with pytest.raises(HandshakeRefused, match="could not verify this server's proof"):
        s.receive_data(c.data_to_send())
    assert c.state == s.state == "failed"


def test_another_cluster_name_is_refused_by_the_server_which_tells_the_client():
    c, s = ClientHandshake(KEY), ServerHandshake(ClusterSecret.from_secret("c2", b"k" * 32))
    with pytest.raises(HandshakeFailed, match="belongs to cluster 'c1'"):
        s.receive_data(c.data_to_send())
    with pytest.raises(HandshakeRefused, match="'c1' is not this node's cluster"):
        c.receive_data(s.data_to_send())


def test_an_impostor_server_is_caught_before_the_client_proves_anything():
    c = ClientHandshake(KEY)
    hello = msgpack.unpackb(c.data_to_send()[8:])
    fake = [auth.CHALLENGE, auth.PROTOCOL_VERSION, os.urandom(32), os.urandom(32)]
    with pytest.raises(HandshakeFailed, match="server did not prove"):
        c.receive_data(b"".join(encode_frame(msgpack.packb(fake))))
    out = c.data_to_send()
    assert msgpack.unpackb(out[8:])[0] == auth.REFUSED  # no PROOF was sent
    assert hello[0] == auth.HELLO


def test_a_recorded_exchange_cannot_be_replayed():
    c, s = ClientHandshake(KEY), ServerHandshake(KEY)
    hello = c.data_to_send()
    s.receive_data(hello)
    c.receive_data(s.data_to_send())
    proof = c.data_to_send()
    s.receive_data(proof)
    assert s.established
    # The eavesdropper replays HELLO and PROOF to a fresh server: it picks a fresh nonce.
    s2 = ServerHandshake(KEY)
    s2.receive_data(hello)
    s2.data_to_send()
    with pytest.raises(HandshakeFailed, match="client did not prove"):
        s2.receive_data(proof)


def test_reflection_is_refused():
    nonce = os.urandom(32)
    s = ServerHandshake(KEY, nonce=nonce)
    hello = [auth.HELLO, auth.PROTOCOL_VERSION, "c1", nonce]
    with pytest.raises(HandshakeFailed, match="reflection"):
        s.receive_data(b"".join(encode_frame(msgpack.packb(hello))))


def test_a_request_before_authentication_is_refused():
    s = ServerHandshake(KEY)
    raw = b"".join(bytes(b) for b in encode_frame(request_header(1, "kv.get", {"p": 0}, 5.0)))
    with pytest.raises(HandshakeFailed, match="unexpected message kind 0"):
        s.receive_data(raw)
    assert msgpack.unpackb(s.data_to_send()[8:])[0] == auth.REFUSED


def test_an_oversized_frame_before_authentication_is_refused_from_its_prefix():
    s = ServerHandshake(KEY)
    assert s.wanted() <= auth.HANDSHAKE_MAX_FRAME_BYTES
    with pytest.raises(HandshakeFailed, match="limit is 4096"):
        s.receive_data((60 << 20).to_bytes(4, "big") + (10).to_bytes(4, "big"))


def test_another_protocol_version_is_refused_with_a_reason():
    s = ServerHandshake(KEY)
    hello = [auth.HELLO, 99, "c1", os.urandom(32)]
    with pytest.raises(HandshakeFailed, match="version 99"):
        s.receive_data(b"".join(encode_frame(msgpack.packb(hello))))


def test_bytes_after_the_handshake_are_handed_on():
    c, s = ClientHandshake(KEY), ServerHandshake(KEY)
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    s.receive_data(c.data_to_send() + b"next frame")
    assert s.established and s.unused_data() == b"next frame"


def test_the_secret_is_never_shown():
    k = ClusterSecret.from_secret("c1", b"supersecret-supersecret-supersecret")
    assert "supersecret" not in repr(k) and b"supersecret" not in k.key
    with pytest.raises(ValueError, match="at least 32"):
        ClusterSecret.from_secret("c1", b"short")


# --- the secret's sources ----------------------------------------------------------------------

def test_up_creates_an_owner_only_secret_file(tmp_path):
    cfg = loads("[cluster]\ndata_dir = \"var\"\n", path=str(tmp_path / "cluster.toml"))
    assert cfg.secret_file == tmp_path / "var" / "cluster.secret"
    with pytest.raises(ConfigError, match="cannot read the cluster secret .*headwater up"):
        cluster_secret(cfg, env={})
    secret, created = ensure_cluster_secret(cfg, env={})
    assert created == cfg.secret_file
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    assert stat.S_IMODE(created.parent.stat().st_mode) == 0o700
    text = created.read_text()
    assert len(text.strip()) == 64 and int(text, 16) >= 0
    again, created_again = ensure_cluster_secret(cfg, env={})
    assert created_again is None and again.key == secret.key


def test_a_readable_secret_file_is_refused_like_ssh(tmp_path):
    path = tmp_path / "s"
    path.write_text("a" * 64)
    path.chmod(0o644)
    cfg = ClusterConfig(secret_file=path)
    with pytest.raises(ConfigError, match="permissions 0644 .* too open.*chmod 600"):
        cluster_secret(cfg, env={})
    path.chmod(0o600)
    assert cluster_secret(cfg, env={}).source == str(path)


def test_the_environment_variable_wins_and_is_required_when_alone(tmp_path):
    text = "[cluster]\nsecret_env = \"HW_SECRET\"\n"
    cfg = loads(text, path=str(tmp_path / "cluster.toml"))
    assert cfg.secret_file is None
    with pytest.raises(ConfigError, match="HW_SECRET is not set"):
        cluster_secret(cfg, env={})
    assert ensure_cluster_secret(cfg, env={"HW_SECRET": "e" * 40})[1] is None  # nothing written
    assert not list(tmp_path.rglob("cluster.secret"))
    both = loads(text + "secret_file = \"s\"\n", path=str(tmp_path / "cluster.toml"))
    assert both.secret_file == tmp_path / "s"
    assert cluster_secret(both, env={"HW_SECRET": "e" * 40}).source == "$HW_SECRET"
    with pytest.raises(ConfigError, match="at least 32"):
        cluster_secret(cfg, env={"HW_SECRET": "short"})


def test_bad_secret_keys_name_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r":3: cluster.secret_env: 'no-dash' is not an environment"):
        loads("[cluster]\nname = \"x\"\nsecret_env = \"no-dash\"\n", path="c.toml")
    with pytest.raises(ConfigError, match="cluster.secret_file: expected a string"):
        loads("[cluster]\nsecret_file = 3\n", path="c.toml")
