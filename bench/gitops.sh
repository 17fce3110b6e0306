#!/usr/bin/env bash
# GitOps benchmarks, same machine, same run: gix fetch against the git CLI on a repository of 10,000 files and
# 5,000 commits; commit-to-Ready latency through the webhook and through polling; memory with 100 Sources and Syncs.
# Talks only to 127.0.0.1 (git daemon and Capstan). Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
if ! command -v git >/dev/null || [ ! -x "$(git --exec-path)/git-daemon" ]; then
  apt_install git
fi
apt_install python3
build_bins --release
cargo build --release --quiet -p capstan-gitops --example fetch
exec python3 bench/gitops.py --bin "$CARGO_TARGET_DIR/release" "$@"
