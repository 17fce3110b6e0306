#!/usr/bin/env bash
# The operator's resident memory while reconciling against the in-process fake API server: 143 Apps (about 1,000
# Kubernetes objects, the size of Flux's published kustomize-controller figure of 175 MiB) and 1,000 Apps (about
# 7,000 objects). Each run starts the release `capstan operator` as its own process and reads /proc once every App
# has its objects and a status. Figures go to docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
build_bins --release
cargo build --release --quiet -p capstan-kubernetes --example operator_bench
for n in 143 1000; do
  "$CARGO_TARGET_DIR/release/examples/operator_bench" "$CARGO_TARGET_DIR/release/capstan" "$n"
done
