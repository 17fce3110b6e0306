#!/usr/bin/env bash
# Hostile input, measured: API and entry-point latency with 20,000 idle connections held open against the idle
# baseline, and Capstan against Prometheus 2.42 (Debian's) under a target that brings 45,000 new series per scrape.
# `--only idle|churn` runs one half; `--no-pgo` skips the PGO release build (scripts/build-release.sh: two more
# full builds on new code). Figures go to docs/benchmarks.md; raw numbers to /tmp/capstan-bench-hostile.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install prometheus wrk python3
build_bins --release
pgo=()
if [ "${1:-}" = "--no-pgo" ]; then
  shift
else
  pgo=(--pgo-bin "$(scripts/build-release.sh)")
fi
exec python3 bench/hostile.py --bin "$CARGO_TARGET_DIR/release" "${pgo[@]}" "$@"
