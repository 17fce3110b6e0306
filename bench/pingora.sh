#!/usr/bin/env bash
# Issue 23's engine question, answered with figures: Capstan's balancer (hyper, rustls) against a spike of Pingora's
# proxy (bench/pingora-spike: pingora-proxy with rustls, round robin) and nginx, in front of the same two backends,
# same run: plain HTTP and HTTPS keep-alive (wrk), HTTP/2 (h2load), instructions per request (callgrind); and what
# each costs to build from nothing on this machine (a fresh target directory each, deleted afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install nginx wrk nghttp2-client openssl valgrind cmake python3
build_bins --release
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cold() { # DIR COMMAND...: the seconds a cold release build into DIR takes
  local dir=$1; shift
  rm -rf "$dir"
  local start=$SECONDS
  CARGO_TARGET_DIR="$dir" "$@" >&2
  echo $((SECONDS - start))
}
spike_target="$HOME/.cache/capstan/pingora-spike-cold"
spike_s=$(cd bench/pingora-spike && cold "$spike_target" cargo build --release --quiet --locked)
cp "$spike_target/release/pingora-spike" "$tmp/"
rm -rf "$spike_target"
proxy_target="$HOME/.cache/capstan/capstan-proxy-cold"
proxy_s=$(cold "$proxy_target" cargo build --release --quiet -p capstan-proxy)
rm -rf "$proxy_target"
python3 bench/pingora.py --bin "$CARGO_TARGET_DIR/release" --pingora "$tmp/pingora-spike" \
  --build "the Pingora spike (pingora 0.9 with proxy and rustls, and its 40 lines; needs cmake for zlib-ng)=$spike_s" \
  --build "capstan-proxy (Capstan's balancer crate: hyper, h2, rustls, tokio)=$proxy_s" "$@"
