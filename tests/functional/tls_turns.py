"""Reading a TLS connection while another thread feeds it, without sharing its SSL object.

OpenSSL is not safe for one SSL object used by two threads at once: a send in a feeding
thread during a ``recv`` or ``close`` in the reading one crashed the test process (a CI
worker's segfault, after which xdist hung). The two take turns under a lock here: the reader
reads in short slices, the feeder's sends wait for the gap, and nothing is sent after close.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any, Callable


class Turns:
    """The feeding thread's side of a TLS socket shared with the reading thread: each send
    takes the lock the reader holds while it reads, and none follows the close."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.closed = False

    def send(self, data: bytes) -> int:
        with self.lock:
            if self.closed:
                raise OSError("closed")
            return self.sock.send(data)

    def sendall(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                raise OSError("closed")
            self.sock.sendall(data)


def read_while_feeding(sock: ssl.SSLSocket, feed: Callable[[Any], None], deadline: float, *,
                       done: Callable[[bytes], bool] = lambda out: False) -> bytes:
    """What the peer sends on ``sock`` while ``feed`` (in a daemon thread, given a
    :class:`Turns`) writes to it, until the peer closes, ``done(out)`` or the monotonic
    ``deadline``; then closes ``sock``."""
    turn = Turns(sock)

    def run() -> None:
        try:
            feed(turn)
        except (OSError, ValueError):
            pass
    threading.Thread(target=run, daemon=True).start()
    timeout = sock.gettimeout()
    out = b""
    try:
        while time.monotonic() < deadline and not done(out):
            with turn.lock:
                sock.settimeout(0.02)
                try:
                    chunk = sock.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                finally:
                    sock.settimeout(timeout)
            if not chunk:
                break
            out += chunk
    except (OSError, ssl.SSLError):
        pass
    finally:
        with turn.lock:
            turn.closed = True
            sock.close()
    return out
