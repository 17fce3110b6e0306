#!/usr/bin/env bash
# The control plane's API: requests per second and p99 of `get apps` and of `apply` of one App, keep-alive, driven
# by wrk, for the build before TLS and roles (plain HTTP, one token) against this build over TLS with a named,
# namespaced token (and over plain HTTP, to separate TLS from authorization). Same run, interleaved rounds, medians.
# The baseline is built once from BASELINE_REV (default: the last commit before issue 22's TLS and roles) into its
# own target directory under ~/.cache, and reused. The PGO release build (scripts/build-release.sh) is measured too
# unless `--no-pgo` is given.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install wrk python3 git
build_bins --release
BASELINE_REV="${BASELINE_REV:-49a16d6}"
base_target="$HOME/.cache/capstan/bench-baseline-$BASELINE_REV"
if [ ! -x "$base_target/release/capstan" ]; then
  tree="$(mktemp -d)"
  git worktree add --detach "$tree" "$BASELINE_REV" >/dev/null
  (cd "$tree" && CARGO_TARGET_DIR="$base_target" cargo build --release --quiet -p capstan-cli)
  git worktree remove --force "$tree"
fi
pgo=()
if [ "${1:-}" = "--no-pgo" ]; then
  shift
else
  pgo=(--pgo-exe "$(scripts/build-release.sh)")
fi
exec python3 bench/api.py --bin "$CARGO_TARGET_DIR/release" --baseline "$base_target/release/capstan" "${pgo[@]}" "$@"
