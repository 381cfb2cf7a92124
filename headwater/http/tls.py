"""TLS for the HTTP core: a server SSLContext that offers HTTP/2 and HTTP/1.1 by ALPN."""

from __future__ import annotations

import os
import ssl

__all__ = ["ALPN_PROTOCOLS", "server_ssl_context"]

ALPN_PROTOCOLS = ("h2", "http/1.1")


def server_ssl_context(certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None = None,
                       *, alpn: tuple[str, ...] = ALPN_PROTOCOLS) -> ssl.SSLContext:
    """TLS 1.2+ server context with the certificate chain, offering ``alpn`` (h2 first).

    RFC 9113 section 9.2 asks HTTP/2 over TLS for TLS 1.2 or later, no compression and no
    renegotiation; the defaults of ``ssl.create_default_context`` give that.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.fspath(certfile), os.fspath(keyfile) if keyfile else None)
    ctx.set_alpn_protocols(list(alpn))
    ctx.options |= ssl.OP_NO_COMPRESSION
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx
