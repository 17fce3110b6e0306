#!/usr/bin/env bash
# Tail latency on a saturated machine (2 cores shared by wrk, the backends and the balancer): Capstan with its
# busy-worker yield off and on, against HAProxy, round-robin and with all traffic on one replica (sticky).
# Arguments go to bench/lb_tail.py (--conns, --rounds, --seconds, --limits).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install haproxy wrk python3
build_bins --release
exec python3 bench/lb_tail.py --bin "$CARGO_TARGET_DIR/release" "$@"
