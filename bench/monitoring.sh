#!/usr/bin/env bash
# Capstan's scraper and store against Prometheus (Debian's), same run, same targets: CPU per ingested sample,
# memory per active series, and rate() over one hour. Figures go to docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install prometheus python3
cargo build --release --quiet -p capstan-observe --example ingest
exec python3 bench/monitoring.py --example "$CARGO_TARGET_DIR/release/examples/ingest" "$@"
