#!/usr/bin/env bash
# Certificates that issue themselves: Capstan against Caddy (Debian's), same run: ACME time to serve against
# Debian's pebble on loopback, and 1,000 certificates from a local CA (time, CPU, memory, idle CPU). Figures in
# docs/benchmarks.md; raw numbers in /tmp/capstan-bench-certificates.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install caddy pebble openssl python3
build_bins --release
cd bench
exec python3 certificates.py --bin "$CARGO_TARGET_DIR/release" "$@"
