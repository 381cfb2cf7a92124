#!/usr/bin/env bash
# Debian packages `python -m headwater.bench` drives: OpenStack Swift (the peer we compare with,
# run from a temp dir, nothing written to /etc), memcached (Swift's token cache), iperf3 (the
# loopback TCP ceiling), curl, and wrk + nginx (`bench http_core`: the load generator and the
# peer, run from a temp dir), knot + dnsperf (`bench dns`: the peer DNS server, run from a temp
# dir with its own knot.conf, and the load generator), varnish + nghttp2-client (`bench edge`: the
# second peer cache, run from a temp dir with its own -n work dir, and h2load for HTTP/2), openssl
# (`bench drm`: `openssl speed`, the AES ceiling; wrk drives its licence server). Idempotent: installs only what is missing;
# `make bench` calls it.
set -euo pipefail
PACKAGES=(swift-proxy swift-object swift-container swift-account python3-swift memcached iperf3 curl wrk nginx knot dnsperf varnish nghttp2-client openssl)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "bench deps: all present (${PACKAGES[*]})"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "bench deps: missing ${missing[*]}: run this script as root or apt-get install them" >&2
  exit 1
fi
echo "bench deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when they are absent or a first attempt fails.
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then apt-get update -qq; fi
# policy-rc.d 101 keeps the packages' own services (memcached, swift-*, iperf3, nginx, knot, varnish) from
# starting: the bench runs its own instances on its own ports.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1
fi
trap '[[ $made_policy == 1 ]] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" \
  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
echo "bench deps: done"
