"""The DRM package's subcommands: packaging, content keys and test entitlement tokens.

    headwater package in.mp4 --out DIR|s3://bucket/prefix/ --scheme cbcs|cenc|aes128|none [--dash] [--hls]
                      [--segment 2s] [--title 1 | --kid HEX --key HEX] [--licence-url URL]
                      [--rotate-every 10m]   a new key (from the store, by --title) every period

    headwater keys new --title 1 [--scheme cbcs] [--show-key]   a random KID + key; prints the KID
    headwater keys list [--title 1]                              KIDs, titles, schemes, KEK ids (no keys)
    headwater keys rotate-kek --new-kek-file FILE                re-wrap every key under a new KEK
    headwater keys make-kek FILE                                 a fresh KEK file (0600)
    headwater entitle --user alice --title 1 --expires 2h [--device D] [--rental-end 48h] [--jti ID]

Each reads ``[licence]`` from cluster.toml (``-c``) and opens the daemon's key store itself:
LMDB lets the CLI write while the daemon reads, and the daemon serves a new key on its next
request. A key is printed only with ``--show-key`` (base64url and hex), never logged.
"""

from __future__ import annotations

import argparse
import functools
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Callable

from headwater.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from headwater.cli import err as _err
from headwater.config import ConfigError, load

from headwater.sealed import SealedError

from .errors import DrmError

__all__ = ["add_commands", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w`` or bare seconds; ValueError otherwise."""
    text = text.strip()
    unit = text[-1:].lower()
    number = text[:-1] if unit in _UNITS else text
    try:
        value = float(number) * _UNITS.get(unit, 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 2h, 7d") from None
    if value <= 0:
        raise ValueError(f"{text!r}: a duration is positive")
    return value


def _reports_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """One table from failures to exit codes for every command here: a bad configuration or
    argument is a usage error (2); a key store, sealing, packaging or I/O failure is 1."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ConfigError as e:
            _err(str(e).lstrip(": "))
            return EXIT_USAGE
        except FileNotFoundError as e:
            _err(f"{e.filename}: no such file")
            return EXIT_USAGE
        except ValueError as e:
            _err(str(e))
            return EXIT_USAGE
        except (DrmError, SealedError, OSError) as e:
            _err(str(e))
            return EXIT_FAILED
    return run


def add_commands(sub: Any, config_help: str) -> None:
    """``headwater package``, ``headwater keys …`` and ``headwater entitle``."""
    pk = sub.add_parser("package", help="package an MP4 into encrypted CMAF with DASH and HLS manifests")
    pk.add_argument("input", metavar="IN.mp4", help="a progressive MP4 (H.264, HEVC or VP9 video, AAC or Opus audio; VP9 and Opus go in the MPD only)")
    pk.add_argument("--out", required=True, metavar="DIR|s3://BUCKET/PREFIX/",
                    help="a local folder, or the object store of this cluster")
    pk.add_argument("--scheme", default="cbcs", choices=("cbcs", "cenc", "aes128", "none"),
                    help="default: cbcs; aes128 is classic HLS whole-segment AES-128 (HLS only, the key "
                    "from the licence server's GET /keys/<KID>)")
    pk.add_argument("--dash", action="store_true", help="write manifest.mpd (default: both manifests)")
    pk.add_argument("--hls", action="store_true", help="write master.m3u8 (default: both manifests)")
    pk.add_argument("--segment", default="2s", metavar="DURATION", help="target segment duration (default 2s)")
    pk.add_argument("--title", default=None, help="take the title's content key from the key store "
                    "([licence]), making one if it has none")
    pk.add_argument("--kid", default=None, metavar="HEX", help="a KID given directly (with --key)")
    pk.add_argument("--key", default=None, metavar="HEX", help="a content key given directly (with --kid)")
    pk.add_argument("--licence-url", default=None, metavar="URL",
                    help="the licence URL named in the MPD, and beside which aes128 playlists name the "
                    "key (default: this cluster's [licence] server)")
    pk.add_argument("--webm", action="store_true",
                    help="write the VP9 and Opus tracks as WebM DASH segments (WebM Encryption, AES-CTR under the "
                    "same key) instead of CMAF")
    pk.add_argument("--rotate-every", default=None, metavar="DURATION",
                    help="key rotation (cenc/cbcs, with --title): a new key from the store for each period of "
                    "this length, starting at the first keyframe at or after each multiple of it")
    pk.add_argument("-c", "--config", metavar="FILE", help=config_help)
    pk.set_defaults(func=cmd_package)

    p = sub.add_parser("keys", help="DRM content keys: make, list, rotate the key-encryption key")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    n = keys_sub.add_parser("new", help="a random KID and content key for a title; prints the KID")
    n.add_argument("--title", required=True, help="the title id")
    n.add_argument("--scheme", default="", choices=("", "cenc", "cbcs", "aes128"), help="what the key will encrypt")
    n.add_argument("--show-key", action="store_true", help="print the key too (base64url and hex)")
    n.add_argument("-c", "--config", metavar="FILE", help=config_help)
    n.set_defaults(func=cmd_keys_new)
    ls = keys_sub.add_parser("list", help="every key's KID, title, scheme, creation time and KEK id (no keys)")
    ls.add_argument("--title", default=None)
    ls.add_argument("-c", "--config", metavar="FILE", help=config_help)
    ls.set_defaults(func=cmd_keys_list)
    r = keys_sub.add_parser("rotate-kek", help="re-wrap every key under a new key-encryption key, live")
    r.add_argument("--new-kek-file", required=True, metavar="FILE", help="the new KEK (make one with make-kek)")
    r.add_argument("-c", "--config", metavar="FILE", help=config_help)
    r.set_defaults(func=cmd_keys_rotate)
    m = keys_sub.add_parser("make-kek", help="write a fresh random KEK into FILE (mode 0600)")
    m.add_argument("file", metavar="FILE")
    m.set_defaults(func=cmd_keys_make_kek)

    e = sub.add_parser("entitle", help="a signed entitlement token for the licence server (for tests)")
    e.add_argument("--user", required=True)
    e.add_argument("--title", required=True, action="append", help="a title id (repeatable)")
    e.add_argument("--expires", required=True, metavar="DURATION", help="90s, 15m, 2h, 7d")
    e.add_argument("--device", default=None)
    e.add_argument("--not-before", default=None, metavar="DURATION", help="valid only after this long")
    e.add_argument("--rental-end", default=None, metavar="DURATION", help="the rental window ends after this long")
    e.add_argument("--jti", default=None, help="the token id (default: random)")
    e.add_argument("--key-id", default=None, help="the [[licence.tokens.keys]] id to sign with")
    e.add_argument("-c", "--config", metavar="FILE", help=config_help)
    e.set_defaults(func=cmd_entitle)


def _node(args: argparse.Namespace) -> tuple[Any, Any]:
    cfg = load(args.config)
    if cfg.licence is None:
        raise ConfigError("licence", "cluster.toml has no [licence] section")
    return cfg, cfg.licence


def _store(node: Any) -> Any:
    from .licence.daemon import open_key_store

    return open_key_store(node, create_kek=True)


@_reports_errors
def cmd_keys_new(args: argparse.Namespace) -> int:
    """``headwater keys new --title T``."""
    from .licence.clearkey import b64url

    _, node = _node(args)
    store = _store(node)
    try:
        key = store.add(str(args.title), scheme=args.scheme)
    finally:
        store.close()
    uuid = key.kid.hex()
    uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
    print(f"kid {b64url(key.kid)} {key.kid.hex()} {uuid} title {key.title}")
    if args.show_key:
        print(f"key {b64url(key.key)} {key.key.hex()}")
    return EXIT_OK


@_reports_errors
def cmd_keys_list(args: argparse.Namespace) -> int:
    """``headwater keys list``: one line per key, no key material."""
    from .licence.clearkey import b64url

    _, node = _node(args)
    store = _store(node)
    try:
        infos = list(store.infos(args.title))
    finally:
        store.close()
    for i in infos:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(i.created))
        print(f"{b64url(i.kid)}  {i.kid.hex()}  title {i.title}  {i.scheme or '-'}  {created}  kek {i.kek_id.hex()}")
    print(f"{len(infos)} key(s)", file=sys.stderr)
    return EXIT_OK


@_reports_errors
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """``headwater keys rotate-kek --new-kek-file F``."""
    _, node = _node(args)
    if not Path(args.new_kek_file).exists():
        _err(f"{args.new_kek_file}: no such file (make one with `headwater keys make-kek FILE`)")
        return EXIT_USAGE
    store = _store(node)
    try:
        changed = store.rotate(Path(args.new_kek_file))
        total = store.count()
        kek_id = store.current_kek.id.hex()
    finally:
        store.close()
    print(f"re-wrapped {changed} of {total} key(s) under KEK {kek_id}; set kek_file = \"{args.new_kek_file}\" "
          f"in [licence], then the old KEK file may be removed")
    return EXIT_OK


def cmd_keys_make_kek(args: argparse.Namespace) -> int:
    """``headwater keys make-kek FILE``."""
    from .keys.kek import create_kek_file, read_kek_file

    path = Path(args.file)
    if not create_kek_file(path):
        _err(f"{path} exists already")
        return EXIT_FAILED
    print(f"KEK {read_kek_file(path).id.hex()} written to {path} (mode 0600)")
    return EXIT_OK


@_reports_errors
def cmd_entitle(args: argparse.Namespace) -> int:
    """``headwater entitle --user U --title T --expires 2h``: print a signed token."""
    from .licence.entitlement import sign_token
    from .licence.tokenkeys import signing_key

    cfg, node = _node(args)
    now = int(time.time())
    claims: dict[str, Any] = {"sub": args.user, "titles": list(args.title), "iat": now,
                              "exp": now + int(parse_duration(args.expires)),
                              "jti": args.jti or secrets.token_urlsafe(12)}
    if args.device:
        claims["device"] = args.device
    if args.not_before:
        claims["nbf"] = now + int(parse_duration(args.not_before))
    if args.rental_end:
        claims["rental_end"] = now + int(parse_duration(args.rental_end))
    if node.tokens.issuer:
        claims["iss"] = node.tokens.issuer
    if node.tokens.audience:
        claims["aud"] = node.tokens.audience
    kid, alg, key = signing_key(cfg, node, args.key_id)
    print(sign_token(claims, key, alg, kid=kid))
    return EXIT_OK


def _package_key(args: argparse.Namespace) -> tuple[bytes, bytes, Any]:
    """(KID, key, cluster config or None) for ``headwater package``: given directly, or the
    title's key from the key store (made now if the title has none for this scheme)."""
    if args.kid or args.key:
        if not (args.kid and args.key) or args.title:
            raise ValueError("--kid and --key go together, instead of --title")
        try:
            kid, key = bytes.fromhex(args.kid), bytes.fromhex(args.key)
        except ValueError:
            raise ValueError("--kid and --key are hex") from None
        if len(kid) != 16 or len(key) != 16:
            raise ValueError("--kid and --key are 16 bytes (32 hex digits) each")
        return kid, key, None
    if not args.title:
        raise ValueError(f"--scheme {args.scheme} needs a key: --title T (from the key store) or --kid/--key")
    cfg, node = _node(args)
    store = _store(node)
    try:
        infos = [i for i in store.infos(str(args.title)) if i.scheme in (args.scheme, "")]
        if infos:
            # The newest key of the title for this scheme: re-packaging keeps the key players hold.
            newest = max(infos, key=lambda i: (i.scheme == args.scheme, i.created))
            content = store.get(newest.kid)
            if content is None:
                raise DrmError(f"key {newest.kid.hex()} vanished from the store")
        else:
            content = store.add(str(args.title), scheme=args.scheme)
            print(f"made key {content.kid.hex()} for title {args.title}", file=sys.stderr)
    finally:
        store.close()
    return content.kid, content.key, cfg


def _package_sink(args: argparse.Namespace, cfg: Any) -> Any:
    """The sink ``--out`` names: a local folder, or ``s3://`` in this cluster's object store
    (its gateway, as the first ``[[users]]`` entry unless AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
    are set)."""
    import os

    from headwater.localca import client_ssl_context

    from .package.s3sink import S3Sink, S3Target, parse_s3_url
    from .package.sink import LocalFolderSink

    if not args.out.startswith("s3://"):
        return LocalFolderSink(args.out)
    bucket, prefix = parse_s3_url(args.out)
    cfg = cfg or load(args.config)
    gateway = getattr(cfg, "gateway", None)
    if gateway is None:
        raise ConfigError("gateway", "s3:// output needs the object store's [gateway] in cluster.toml")
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not (access and secret):
        users = tuple(getattr(cfg, "users", ()) or ())
        if not users:
            raise ConfigError("users", "s3:// output needs [[users]] credentials or AWS_ACCESS_KEY_ID")
        access, secret = users[0].access_key, users[0].secret_key
    https = bool(getattr(gateway, "tls_cert", None))
    region = getattr(getattr(cfg, "objstore", None), "region", "") or "us-east-1"
    verify = client_ssl_context(cfg) if https else None
    return S3Sink(S3Target(endpoint=f"{'https' if https else 'http'}://{gateway.host}:{gateway.port}",
                           bucket=bucket, prefix=prefix, access_key=access, secret_key=secret, region=region),
                  ssl_context=verify if not isinstance(verify, bool) else None)


@_reports_errors
def cmd_package(args: argparse.Namespace) -> int:
    """``headwater package IN --out DIR|s3://… --scheme S``: segments, manifests; nothing is
    published unless the whole title is."""
    from fractions import Fraction

    from .package.pipeline import PackageOptions, package_path

    segment = Fraction(parse_duration(args.segment)).limit_denominator(1000)
    kid = key = b""
    cfg = None
    rotate = None
    store = None
    if args.rotate_every is not None:
        rotate = Fraction(parse_duration(args.rotate_every)).limit_denominator(1000)
        if args.kid or args.key:
            raise ValueError("--rotate-every takes a new key from the key store for each period: "
                             "a single --kid/--key cannot rotate (use --title)")
        if args.scheme not in ("cenc", "cbcs"):
            raise ValueError(f"--rotate-every is for --scheme cenc or cbcs, not {args.scheme}")
        if not args.title:
            raise ValueError("--rotate-every needs --title: each period's key is made in the key store")
        if rotate < segment:
            raise ValueError(f"--rotate-every {args.rotate_every} is shorter than a segment ({args.segment})")
        cfg, node = _node(args)
    elif args.scheme != "none":
        kid, key, cfg = _package_key(args)
    licence_url = args.licence_url
    if licence_url is None and args.scheme != "none":
        cfg = cfg or _maybe_load(args.config)
        lic = getattr(cfg, "licence", None) if cfg is not None else None
        if lic is not None:
            scheme = "https" if lic.tls_cert else "http"
            licence_url = f"{scheme}://{lic.host}:{lic.port}/licence"
    both = not (args.dash or args.hls)
    if args.scheme == "aes128":
        if args.dash:
            raise ValueError("--scheme aes128 is HLS's whole-segment METHOD=AES-128, which DASH does not have: "
                             "drop --dash (use cenc or cbcs for DASH)")
        both = False
        args.hls = True
        if not licence_url:
            raise ValueError("--scheme aes128 needs --licence-url (or a [licence] server in cluster.toml): "
                             "the playlists name its key delivery, GET <licence URL's folder>/keys/<KID hex>")
    if not Path(args.input).is_file():
        raise FileNotFoundError(2, "no such file", args.input)
    webm: frozenset[int] = frozenset()
    if getattr(args, "webm", False):
        from .bmff.movie import read_movie
        from .package.webm import webm_track_ids_of

        with open(args.input, "rb") as f:
            webm = webm_track_ids_of(read_movie(f))
        if not webm:
            raise DrmError("--webm: the input has no VP9 or Opus track (WebM carries those only)")
    options = PackageOptions(scheme=args.scheme, key=key, kid=kid, segment_seconds=segment,
                             dash=args.dash or both, hls=args.hls or both, licence_url=licence_url,
                             rotate_seconds=rotate, webm_track_ids=webm)
    sink = _package_sink(args, cfg)
    made: list[bytes] = []
    period_keys = None
    if rotate is not None:
        store = _store(node)

        def period_keys(n: int) -> tuple[bytes, bytes]:
            # Always a new key: a period's key must never be another title's or period's.
            content = store.add(str(args.title), scheme=args.scheme)
            made.append(content.kid)
            return content.kid, content.key
    try:
        result = package_path(args.input, sink, options, period_keys=period_keys)
    except (DrmError, OSError) as e:
        raise DrmError(f"nothing published: {e}") from e
    finally:
        if store is not None:
            store.close()
    for t in result.tracks:
        # WebM Encryption has one mode, AES-CTR, whatever --scheme the CMAF tracks have.
        how = ("webm-ctr" if t.container == "webm" else args.scheme) if args.scheme != "none" else ""
        print(f"{t.kind}-{t.track_id}  {t.codec}{'  webm' if t.container == 'webm' else ''}  {len(t.segments)} "
              f"segments  {t.bandwidth // 1000} kbit/s{'  encrypted ' + how if how else ''}")
    for name in result.manifests:
        print(f"{args.out.rstrip('/')}/{name}")
    if kid:
        print(f"kid {kid.hex()}")
    for n, k in enumerate(made, 1):
        print(f"period {n} kid {k.hex()}")
    return EXIT_OK


def _maybe_load(config: str | None) -> Any:
    """cluster.toml if there is one (``package`` into a folder with --kid/--key needs none)."""
    try:
        return load(config)
    except (ConfigError, OSError):
        return None
