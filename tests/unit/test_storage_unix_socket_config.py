"""[objstore] storage_unix_sockets, and which storage nodes a client may reach by their Unix socket."""

from pathlib import Path

import pytest
from headwater.objstore.config import StorageNodeConfig

from headwater.config import ConfigError, loads


def test_storage_unix_sockets_default_on_and_can_be_turned_off():
    assert loads("[objstore]\n").objstore.storage_unix_sockets is True
    assert loads("[objstore]\nstorage_unix_sockets = false\n").objstore.storage_unix_sockets is False
    with pytest.raises(ConfigError, match=r"objstore\.storage_unix_sockets"):
        loads('[objstore]\nstorage_unix_sockets = "yes"\n')


def test_only_a_node_on_this_machines_loopback_is_reached_by_its_socket():
    def node(host: str) -> StorageNodeConfig:
        return StorageNodeConfig(id="s1", host=host, port=1, admin_port=2, data_dir=Path("/d/s1"))

    for host in ("127.0.0.1", "::1", "localhost"):
        assert node(host).local_rpc_socket() == "/d/s1/rpc-1.sock"
    # Another host, or a simulated one (the probe tests give those 127.0.N.x and cut them off
    # with packet filters, which a Unix socket would pass under).
    for host in ("10.0.0.5", "127.0.1.1", "storage-1.example"):
        assert node(host).local_rpc_socket() is None
