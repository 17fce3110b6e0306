#!/usr/bin/env bash
# The HA stack (examples/ha-stack): time from `capstan up` to the whole stack Ready, cold and warm, and Teamboard's
# throughput for reads, searches and writes through Capstan's balancer against HAProxy (Debian) in front of the same
# two nodes and against one node directly, driven by wrk. Talks only to 127.0.0.1. Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install haproxy wrk python3 curl
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then apt_install postgresql postgresql-client; fi
build_bins --release
exec python3 bench/teamboard.py --bin "$CARGO_TARGET_DIR/release" "$@"
