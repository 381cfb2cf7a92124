"""A TCP relay in front of PostgreSQL that loses one COMMIT's answer: the server commits, the
client reads end-of-file (psycopg's OperationalError) and cannot tell whether its transaction
happened, as after a network cut or a failover at that moment. For the tests of what a caller
does with a write whose outcome it does not know."""

from __future__ import annotations

import socket
import threading
import time

from tests.cluster import free_ports

__all__ = ["CommitCutter"]


class CommitCutter:
    """A TCP relay to PostgreSQL that, once (again after :meth:`arm`), answers the COMMIT of the
    first transaction that sent ``after`` (bytes of a statement or of a bound parameter) with
    nothing but a closed connection: the server did commit (``deliver``), or never saw the
    COMMIT and rolled back (not ``deliver``); the client cannot tell which."""

    def __init__(self, upstream: int, *, after: bytes, deliver: bool = True) -> None:
        self.upstream = upstream
        self.after = after
        self.deliver = deliver
        self.port = free_ports(1)[0]
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, *, deliver: bool) -> None:
        """Cut the next such COMMIT (after the last cut), delivered to the server or not."""
        self.deliver = deliver
        self.cut.clear()

    def close(self) -> None:
        self._stop = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            conn = {"publishing": False, "dropping": False}
            threading.Thread(target=self._to_server, args=(client, server, conn), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, conn), daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket, conn: dict) -> None:
        seen = b""
        try:
            while data := client.recv(65536):
                seen = (seen + data)[-65536:]
                if not self.cut.is_set() and self.after in seen:
                    conn["publishing"] = True
                if conn["publishing"] and b"COMMIT" in data and not self.cut.is_set():
                    self.cut.set()
                    conn["dropping"] = True  # before the COMMIT leaves: its answer is never relayed
                    if self.deliver:
                        server.sendall(data)
                        time.sleep(0.5)  # the server commits and answers (into the void)
                    break
                server.sendall(data)
                if b"COMMIT" in data:  # a transaction ended: ``after`` is looked for in the next one
                    seen, conn["publishing"] = b"", False
        except OSError:
            pass
        for s in (client, server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _to_client(self, server: socket.socket, client: socket.socket, conn: dict) -> None:
        try:
            while data := server.recv(65536):
                if conn["dropping"]:
                    continue
                client.sendall(data)
        except OSError:
            pass
