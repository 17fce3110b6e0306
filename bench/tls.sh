#!/usr/bin/env bash
# The front door over TLS: Capstan's Gateway HTTPS listener against nginx and HAProxy (Debian), same run, same
# ECDSA P-256 certificate, TLS 1.3, the same two backends: keep-alive req/s and p99 and new TLS connections per second
# (wrk), HTTP/2 (h2load), memory with 8,000 idle TLS connections (`--idle 10000` where the descriptor limit lets
# HAProxy hold them); and plain HTTP through a Gateway listener with 100 HTTPRoutes against the App's own `expose`
# entry point. Capstan is measured as `cargo build --release` makes it and
# as the PGO release build (scripts/build-release.sh); `--no-pgo` skips the second.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install nginx haproxy wrk nghttp2-client openssl python3
build_bins --release
pgo=()
if [ "${1:-}" = "--no-pgo" ]; then
  shift
else
  pgo=(--pgo-bin "$(scripts/build-release.sh)")
fi
exec python3 bench/tls.py --bin "$CARGO_TARGET_DIR/release" "${pgo[@]}" "$@"
