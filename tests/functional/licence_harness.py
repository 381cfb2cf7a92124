"""The licence daemon as an operator runs it, for functional tests: ``headwater node licence``
(a real subprocess) from a cluster.toml in a temporary folder, TLS "auto" from the cluster's
local CA, and the CLI (``keys``, ``entitle``, ``package``, ``ca``) run in this process.

- :func:`cli` runs ``headwater ARGS -c cluster.toml`` in-process and returns its stdout.
- :func:`prepare_licence` writes the config and the cluster secret (and, as ``headwater up``
  does, the local CA and its leaf, so a browser can be told which certificate to trust before
  the daemon is up); :func:`running_licence` starts the daemon, waits for its admin
  ``/healthz`` and yields a :class:`Licence`; it stops the daemon on exit.
- :class:`Licence` knows the daemon's URL, the CA file, the leaf it actually serves (as the
  base64 SHA-256 of its SPKI, what Chromium's ``--ignore-certificate-errors-spki-list`` takes),
  and reads its audit log (one JSON line per licence granted or refused).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from headwater import localca
from headwater.cli import main
from headwater.config import load
from tests.cluster import free_ports

__all__ = ["CONFIG", "HEADWATER", "Licence", "LicenceFolder", "cli", "prepare_licence", "running_licence",
           "spki_sha256", "unb64"]

HEADWATER = str(Path(sys.executable).with_name("headwater"))

#: The cluster.toml the daemon runs from: its own ports, TLS from the local CA, HS256 tokens
#: signed with a secret sealed in the data dir (shared with `headwater entitle`), and tight
#: body limits (so a trickled body is cut off within a test's patience).
CONFIG = """
[cluster]
name = "licence-test"
data_dir = "var"

[licence]
port = {port}
admin_port = {admin}
tls_cert = "auto"
tls_key = "auto"

[licence.limits]
max_body_size = "64KiB"
body_timeout_seconds = 1.5
min_body_rate = 256
min_body_rate_window_seconds = 1

[[licence.tokens.keys]]
id = "local"
alg = "HS256"
secret = "sealed"
"""


def cli(path: Path, *args: str | Path) -> str:
    """``headwater ARGS -c PATH`` in this process (the CLI's own code path, without the seconds a
    fresh interpreter costs on a loaded machine); the daemon is another process all the same.
    Fails the test with the output when the command does not exit 0."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*(str(a) for a in args), "-c", str(path)])
    assert code == 0, f"headwater {' '.join(map(str, args))} exited {code}:\n{out.getvalue()}{err.getvalue()}"
    return out.getvalue()


def unb64(text: str) -> bytes:
    """base64url without padding, decoded."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Licence:
    """A running licence daemon: ``config`` (its cluster.toml), ``url`` (``https://…/licence``),
    ``ca`` (the local CA's certificate file) and ``admin`` (its plain-HTTP admin port)."""

    def __init__(self, folder: Path, config: Path, port: int, admin: int, ca: str,
                 proc: subprocess.Popen) -> None:
        self.folder, self.config, self.port, self.admin, self.ca, self.proc = folder, config, port, admin, ca, proc
        self.url = f"https://127.0.0.1:{port}/licence"

    def cli(self, *args: str | Path) -> str:
        """``headwater ARGS`` against this daemon's cluster.toml."""
        return cli(self.config, *args)

    def curl(self, *args: str, path: str = "/licence") -> tuple[int, dict[str, str], bytes]:
        """curl to ``path`` over TLS trusting only the local CA: (status, lower-cased headers, body)."""
        out = subprocess.run(["curl", "-sS", "-i", "--http1.1", "--cacert", self.ca, *args,
                              f"https://127.0.0.1:{self.port}{path}"],
                             capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return int(lines[0].split()[1]), headers, body

    def audit(self) -> list[dict]:
        """Every audit line so far, parsed."""
        path = self.folder / "var/licence/audit.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def leaf_spki_sha256(self) -> str:
        """base64 SHA-256 of the SubjectPublicKeyInfo of the certificate the daemon serves, read
        from a handshake that verified it against the local CA (so it is that CA's leaf)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                der = s.getpeercert(binary_form=True)
        assert der is not None
        return spki_sha256(x509.load_der_x509_certificate(der))


def spki_sha256(cert: x509.Certificate) -> str:
    """base64 SHA-256 of a certificate's SubjectPublicKeyInfo (what Chromium's
    ``--ignore-certificate-errors-spki-list`` takes)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@dataclass(frozen=True)
class LicenceFolder:
    """A licence daemon's folder before it starts: its cluster.toml, ports, and (when the local
    CA was prepared) the leaf certificate it will serve."""

    folder: Path
    config: Path
    port: int
    admin: int
    leaf: Path | None = None

    def leaf_spki_sha256(self) -> str:
        """The prepared leaf's SPKI digest (the chain file starts with the leaf)."""
        assert self.leaf is not None, "prepare_licence(..., make_ca=True) makes the leaf"
        return spki_sha256(x509.load_pem_x509_certificates(self.leaf.read_bytes())[0])


def prepare_licence(folder: Path, *, config: str = CONFIG, make_ca: bool = False) -> LicenceFolder:
    """Write ``folder/cluster.toml`` (``config`` formatted with free ``port`` and ``admin``
    ports) and the cluster secret; with ``make_ca``, also the local CA and the leaf, as
    ``headwater up`` does before any daemon starts (else the daemon makes them on start)."""
    port, admin = free_ports(2)
    path = folder / "cluster.toml"
    path.write_text(config.format(port=port, admin=admin))
    (folder / "var").mkdir(mode=0o700)
    fd = os.open(folder / "var/cluster.secret", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secrets.token_hex(32).encode() + b"\n")
    os.close(fd)
    leaf = None
    if make_ca:
        prepared = localca.prepare(load(str(path)))
        assert prepared is not None, "the config has no tls_cert = \"auto\" listener"
        leaf = prepared[1].cert
    return LicenceFolder(folder, path, port, admin, leaf)


@contextlib.contextmanager
def running_licence(where: Path | LicenceFolder, *, config: str = CONFIG,
                    start_timeout_s: float = 30) -> Iterator[Licence]:
    """``headwater node licence`` from a folder :func:`prepare_licence` wrote (given a plain
    folder, it is prepared here with ``config``), up and healthy; terminated on exit."""
    prepared = where if isinstance(where, LicenceFolder) else prepare_licence(where, config=config)
    folder, path, port, admin = prepared.folder, prepared.config, prepared.port, prepared.admin
    log_path = folder / "licence.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([HEADWATER, "node", "licence", "-c", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=folder)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the licence daemon did not start:\n{log_path.read_text()}"
            time.sleep(0.05)
        ca = cli(path, "ca", "path").strip()
        yield Licence(folder, path, port, admin, ca, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
