"""The statement watchdog (origin/catalogue/watchdog.py) on a socket pair: a read blocked past
its deadline ends (its socket shut down); one that finished in time is never cut, even when its
socket is still open and in use afterwards."""

from __future__ import annotations

import socket
import threading
import time

from headwater.origin.catalogue.watchdog import Watchdog


def test_a_blocked_read_is_cut_at_its_deadline():
    dog = Watchdog(0.05)
    a, b = socket.socketpair()
    try:
        got: list[bytes] = []
        t0 = time.monotonic()
        with dog.guard(a.fileno(), 0.2):
            reader = threading.Thread(target=lambda: got.append(a.recv(10)))
            reader.start()
            reader.join(5)
        took = time.monotonic() - t0
        assert got == [b""] and 0.15 < took < 2 and dog.cut == 1
    finally:
        dog.close()
        a.close()
        b.close()


def test_a_statement_done_in_time_is_never_cut():
    dog = Watchdog(0.02)
    a, b = socket.socketpair()
    try:
        for _ in range(20):
            with dog.guard(a.fileno(), 0.05):
                b.sendall(b"x")
                assert a.recv(1) == b"x"
        time.sleep(0.2)  # past every deadline: the connection, reused, still works
        b.sendall(b"y")
        assert a.recv(1) == b"y" and dog.cut == 0
    finally:
        dog.close()
        a.close()
        b.close()
