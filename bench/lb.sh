#!/usr/bin/env bash
# Capstan's load balancer against nginx and HAProxy (Debian), same run, same two backends on loopback,
# keep-alive, 1 KiB responses, driven by wrk: throughput, p50/p99 latency, CPU time per request; plus HAProxy
# with its sticky cookie against Capstan's, what clients see when a backend is SIGKILLed under load, and the
# user-space instructions each executes per request under callgrind (with a bare hyper proxy as the floor).
# Capstan is measured twice: as `cargo build --release` makes it, and as the PGO release build
# (scripts/build-release.sh; its first run on new code takes two more full builds). `--no-pgo` skips the second.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install nginx haproxy wrk tcpdump valgrind python3
build_bins --release
cargo build --release --quiet -p capstan-proxy --example hyper_floor
pgo=()
if [ "${1:-}" = "--no-pgo" ]; then
  shift
else
  pgo=(--pgo-bin "$(scripts/build-release.sh)")
fi
exec python3 bench/lb.py --bin "$CARGO_TARGET_DIR/release" "${pgo[@]}" "$@"
