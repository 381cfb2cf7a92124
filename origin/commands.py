"""The origin's commands: ``headwater token`` (an access token from this cluster's origin, by the
client-credentials grant, for the README's flow and for scripts), ``headwater password`` (the
web page's users) and ``headwater demo`` (:mod:`.demo`)::

    TOKEN=$(headwater token --client creator-app --scope upload)
    headwater token --client creator-app --print-secret     # the sealed client secret (for curl)
    headwater password --user viewer                        # a sealed user's password
    headwater password --hash < file                        # password_scrypt for [[origin.users]]
    headwater demo                                          # a test title, uploaded and published

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

from .catalogue.errors import CatalogueError

__all__ = ["add_commands", "cmd_token", "cmd_password", "fetch_token", "origin_host", "origin_url", "origin_verify"]


def add_commands(sub: Any, config_help: str) -> None:
    """``headwater token``."""
    t = sub.add_parser("token", help="an OAuth2 access token from the origin's built-in issuer")
    t.add_argument("--client", required=True, help="a [[origin.clients]] id")
    t.add_argument("--scope", action="append", default=None,
                   help="a scope to ask for (repeatable; default: all the client's scopes)")
    t.add_argument("--print-secret", action="store_true", help="print the client's secret instead of a token")
    t.add_argument("--origin", metavar="ID", default=None,
                   help="the [[origin.hosts]] id to ask (default: the first); any host's token is good on every host")
    t.add_argument("-c", "--config", metavar="FILE", help=config_help)
    t.set_defaults(func=cmd_token)
    pw = sub.add_parser("password", help="a web user's sealed password, or an scrypt hash for password_scrypt")
    which = pw.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", help="a [[origin.users]] name whose password is sealed: print it")
    which.add_argument("--hash", action="store_true",
                       help="read a password (a prompt, or stdin's first line) and print its password_scrypt")
    pw.add_argument("--origin", metavar="ID", default=None, help="the [[origin.hosts]] id (default: the first)")
    pw.add_argument("-c", "--config", metavar="FILE", help=config_help)
    pw.set_defaults(func=cmd_password)
    d = sub.add_parser("demo", help="make a test title with ffmpeg, upload it as a creator, wait for it to be "
                                    "published, print the viewer's URL (needs the running cluster: make up)")
    d.add_argument("--seconds", type=int, default=60, help="the test title's length (default 60)")
    d.add_argument("--title", default="Headwater Demo", help="its title (default: Headwater Demo)")
    d.add_argument("--client", default=None, help="the creator's [[origin.clients]] id (default: the first "
                                                  "sealed client with upload and titles:write)")
    d.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for publishing (default 900)")
    d.add_argument("-c", "--config", metavar="FILE", help=config_help)
    d.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import cmd_demo

    return cmd_demo(args)


def origin_host(cfg: Any, host_id: str | None = None) -> Any:
    """The origin process a command talks to: the ``[[origin.hosts]]`` entry ``host_id`` (by
    default the first), or the ``[origin]`` table itself when it names no hosts."""
    node = cfg.origin
    if node is None:
        raise ConfigError("origin", "cluster.toml has no [origin] section")
    if host_id is None:
        return node.hosts[0] if node.hosts else node
    for h in node.hosts or (node,):
        if h.id == host_id:
            return h
    raise ConfigError("origin.hosts", f"no origin host {host_id!r} (known: "
                                      f"{', '.join(h.id for h in node.hosts or (node,))})")


def origin_url(node: Any) -> str:
    """The running origin's base URL as a client on this host reaches it."""
    host = "127.0.0.1" if node.host in ("0.0.0.0", "::") else node.host
    return f"{'https' if node.tls_cert else 'http'}://{host}:{node.port}"


def origin_verify(cfg: Any) -> Any:
    """What httpx verifies the origin's certificate with: the local CA when it exists."""
    from headwater.localca import CA_CERT_FILE, ca_folder

    ca = ca_folder(cfg) / CA_CERT_FILE
    return ssl.create_default_context(cafile=str(ca)) if ca.exists() else True


class TokenError(Exception):
    """A token the issuer would not give (the message says why)."""


def fetch_token(cfg: Any, node: Any, client_id: str, secret: str, scopes: list[str] | None) -> str:
    """An access token from the running origin's built-in issuer (client credentials)."""
    import httpx

    form = {"grant_type": "client_credentials"}
    if scopes:
        form["scope"] = " ".join(scopes)
    url = origin_url(node) + "/oauth/token"
    try:
        r = httpx.post(url, data=form, auth=(client_id, secret), verify=origin_verify(cfg), timeout=10.0,
                       trust_env=False)
    except httpx.HTTPError as e:
        raise TokenError(f"{url}: {e} (is the origin running? headwater up)") from None
    doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200:
        raise TokenError(f"{url}: {r.status_code} {doc.get('error', '')}: {doc.get('error_description', r.text[:200])}")
    return str(doc["access_token"])


def cmd_password(args: argparse.Namespace) -> int:
    from .auth.issuer import user_password
    from .auth.login import MAX_PASSWORD, hash_password

    if args.hash:
        if sys.stdin.isatty():
            import getpass

            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                _err("the two passwords differ")
                return EXIT_FAILED
        else:
            password = sys.stdin.readline().rstrip("\n")
        if not 12 <= len(password) <= MAX_PASSWORD:
            _err(f"a password is 12..{MAX_PASSWORD} characters")
            return EXIT_FAILED
        print(hash_password(password))
        return EXIT_OK
    try:
        cfg = load(args.config)
        node = origin_host(cfg, args.origin)
        user = next((u for u in node.users if u.name == args.user), None)
        if user is None:
            raise ConfigError("origin.users", f"no user {args.user!r} in [[origin.users]]")
        if not user.sealed:
            _err(f"user {user.name!r} has their own password (password_scrypt): it is not stored anywhere")
            return EXIT_FAILED
        print(user_password(cfg, node, user.name))
    except (ConfigError, SealedError, OSError, CatalogueError) as e:
        _err(str(e))
        return EXIT_FAILED
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from .auth.issuer import client_secret

    try:
        cfg = load(args.config)
        node = origin_host(cfg, args.origin)
        client = next((c for c in node.clients if c.id == args.client), None)
        if client is None:
            raise ConfigError("origin.clients", f"no client {args.client!r} in [[origin.clients]]")
        if not client.sealed:
            _err(f"client {client.id!r} has its own secret (secret_sha256): ask the token endpoint with it")
            return EXIT_FAILED
        secret = client_secret(cfg, node, client)
    except (ConfigError, SealedError, OSError, CatalogueError) as e:
        _err(str(e))
        return EXIT_FAILED
    if args.print_secret:
        print(secret)
        return EXIT_OK
    if not node.oauth.builtin:
        _err("the origin uses an external issuer ([origin.oauth] jwks_url): get tokens from it")
        return EXIT_FAILED
    try:
        token = fetch_token(cfg, node, client.id, secret, args.scope)
    except TokenError as e:
        _err(str(e))
        return EXIT_FAILED
    sys.stdout.write(token + "\n")
    return EXIT_OK
