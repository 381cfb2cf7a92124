"""``headwater token``: an access token from this cluster's origin, by the client-credentials
grant, for the README's flow and for scripts::

    TOKEN=$(headwater token --client creator-app --scope upload)
    headwater token --client creator-app --print-secret     # the sealed client secret (for curl)

The command is a client like any other: it reads the client's sealed secret (it runs where the
cluster secret is) and POSTs to the running origin's ``/oauth/token`` over HTTPS trusting the
local CA; it never signs a token itself.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from typing import Any

from headwater.cli import EXIT_FAILED, EXIT_OK
from headwater.cli import err as _err
from headwater.config import ConfigError, load
from headwater.sealed import SealedError

__all__ = ["add_commands", "cmd_token"]


def add_commands(sub: Any, config_help: str) -> None:
    """``headwater token``."""
    t = sub.add_parser("token", help="an OAuth2 access token from the origin's built-in issuer")
    t.add_argument("--client", required=True, help="a [[origin.clients]] id")
    t.add_argument("--scope", action="append", default=None,
                   help="a scope to ask for (repeatable; default: all the client's scopes)")
    t.add_argument("--print-secret", action="store_true", help="print the client's secret instead of a token")
    t.add_argument("-c", "--config", metavar="FILE", help=config_help)
    t.set_defaults(func=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    import httpx

    from headwater.localca import CA_CERT_FILE, ca_folder

    from .auth.issuer import client_secret

    try:
        cfg = load(args.config)
        node = cfg.origin
        if node is None:
            raise ConfigError("origin", "cluster.toml has no [origin] section")
        client = next((c for c in node.clients if c.id == args.client), None)
        if client is None:
            raise ConfigError("origin.clients", f"no client {args.client!r} in [[origin.clients]]")
        if not client.sealed:
            _err(f"client {client.id!r} has its own secret (secret_sha256): ask the token endpoint with it")
            return EXIT_FAILED
        secret = client_secret(cfg, node, client)
    except (ConfigError, SealedError, OSError) as e:
        _err(str(e))
        return EXIT_FAILED
    if args.print_secret:
        print(secret)
        return EXIT_OK
    if not node.oauth.builtin:
        _err("the origin uses an external issuer ([origin.oauth] jwks_url): get tokens from it")
        return EXIT_FAILED
    form = {"grant_type": "client_credentials"}
    if args.scope:
        form["scope"] = " ".join(args.scope)
    ca = ca_folder(cfg) / CA_CERT_FILE
    verify: Any = ssl.create_default_context(cafile=str(ca)) if ca.exists() else True
    host = "127.0.0.1" if node.host in ("0.0.0.0", "::") else node.host
    url = f"{'https' if node.tls_cert else 'http'}://{host}:{node.port}/oauth/token"
    try:
        r = httpx.post(url, data=form, auth=(client.id, secret), verify=verify, timeout=10.0, trust_env=False)
    except httpx.HTTPError as e:
        _err(f"{url}: {e} (is the origin running? headwater up)")
        return EXIT_FAILED
    doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200:
        _err(f"{url}: {r.status_code} {doc.get('error', '')}: {doc.get('error_description', r.text[:200])}")
        return EXIT_FAILED
    sys.stdout.write(doc["access_token"] + "\n")
    return EXIT_OK
