"""`python -m headwater.bench NAME [options]`: run one benchmark by name.

Each benchmark is a module of this package with a ``main(argv) -> int``; ``--help`` after the
name shows its options.
"""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "objstore": "Headwater's S3 gateway against OpenStack Swift (s3api), with machine ceilings",
    "durability": "annual object-loss probability and nines per scheme (Markov model, measured repair)",
    "rebuild": "the reconstructor's rebuild rate after a lost disk, beside the fsync'd-write ceiling",
    "http_core": "the HTTP server core against nginx (one worker each, wrk), with machine ceilings",
    "dns": "the GeoDNS against Knot DNS (dnsperf, ECS and plain queries), with machine ceilings",
    "edge": "the CDN edge's hits against nginx proxy_cache and Varnish (wrk, h2load), misses, Zipf",
    "upstream_client": "the edge's upstream HTTP/1.1 client against httpx (1 KiB and 2 MiB fetch loops)",
    "drm": "packaging + encryption against Shaka Packager, ffmpeg and the AES ceilings; licences/s (wrk)",
    "search": "catalogue search on a 100,000-title synthetic catalogue per backend (SQLite, PostgreSQL), with ceilings",
    "simulate": "the Tbps-scale CDN simulator: scenarios, sweeps, plots, trace replay vs libCacheSim",
    "playback": "a viewer's startup in headless Chromium, DNS -> POP -> regional -> shield -> origin, cold and warm",
    "h2_floods": "what each HTTP/2 frame flood (RST_STREAM, WINDOW_UPDATE, PRIORITY, empty DATA...) costs the core",
    "origin": "tus uploads through the origin beside S3 multipart; the transcode pipeline beside ffmpeg alone",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] not in BENCHES:
        out = sys.stdout if args and args[0] in ("-h", "--help") else sys.stderr
        if args and args[0] not in ("-h", "--help"):
            print(f"unknown benchmark {args[0]!r}", file=out)
        print("usage: python -m headwater.bench NAME [options]   (NAME --help for its options)", file=out)
        for name, what in BENCHES.items():
            print(f"  {name:<10} {what}", file=out)
        return 0 if out is sys.stdout else 2
    module = importlib.import_module(f"{__package__ or 'headwater.bench'}.{args[0]}")
    return module.main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
