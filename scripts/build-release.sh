#!/usr/bin/env bash
# Builds the release `capstan` with profile-guided optimisation (PGO), the way a release binary is built:
#   1. an instrumented build (`-Cprofile-generate`);
#   2. a training run of that build under the work it does in production (scripts/pgo_train.py);
#   3. the optimised build (`-Cprofile-use`), into $CARGO_TARGET_DIR/pgo-use/release/capstan.
# The profile is kept per instrumented binary, so a second run on unchanged code rebuilds nothing.
# Usage: scripts/build-release.sh [--out DIR]   (copies the binary to DIR as well)
# `cargo build --release` gives the same program without the profile; docs/benchmarks.md measures both.
set -euo pipefail
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    # Relative to where the script was called from.
    --out) out="$(realpath -m "${2:?--out needs a directory}")"; shift 2 ;;
    *) echo "build-release.sh: unknown argument $1 (usage: scripts/build-release.sh [--out DIR])" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install wrk nghttp2-client openssl python3

# llvm-profdata must match rustc's LLVM: it comes with the toolchain's llvm-tools component.
host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "installing the llvm-tools component (rustup) for llvm-profdata" >&2
  rustup component add llvm-tools >&2
fi
[ -x "$profdata" ] || { echo "build-release.sh: $profdata not found; install it with: rustup component add llvm-tools" >&2; exit 1; }

pgo="$CARGO_TARGET_DIR/pgo"
mkdir -p "$pgo"
echo "== the backends and the fixture model of the training run (plain release build)" >&2
cargo build --release --quiet -p hello
cargo build --release --quiet -p capstan-serving --example fixture_model
echo "== 1/3 instrumented build" >&2
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/pgo-generate" RUSTFLAGS="-Cprofile-generate=$pgo/raw" \
  cargo build --release --quiet -p capstan-cli
gen="$CARGO_TARGET_DIR/pgo-generate/release/capstan"
key="$(sha256sum "$gen" | cut -c1-16)"
if [ ! -s "$pgo/$key.profdata" ]; then
  echo "== 2/3 training run" >&2
  rm -rf "$pgo/raw"
  python3 scripts/pgo_train.py --capstan "$gen" --bin "$CARGO_TARGET_DIR/release" \
    --fixture-model "$CARGO_TARGET_DIR/release/examples/fixture_model" >&2
  "$profdata" merge -o "$pgo/$key.profdata.tmp" "$pgo/raw" >&2
  mv "$pgo/$key.profdata.tmp" "$pgo/$key.profdata"
  rm -rf "$pgo/raw"
  # Older profiles are of code that has changed since.
  find "$pgo" -maxdepth 1 -name '*.profdata' ! -name "$key.profdata" ! -name capstan.profdata -delete
else
  echo "== 2/3 training run: the profile of this instrumented build is kept from an earlier run" >&2
fi
# rustc records the profile as an input: the optimised build is redone only when its content changes.
cmp -s "$pgo/$key.profdata" "$pgo/capstan.profdata" 2>/dev/null || cp "$pgo/$key.profdata" "$pgo/capstan.profdata"
echo "== 3/3 optimised build" >&2
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/pgo-use" RUSTFLAGS="-Cprofile-use=$pgo/capstan.profdata" \
  cargo build --release --quiet -p capstan-cli
bin="$CARGO_TARGET_DIR/pgo-use/release/capstan"
if [ -n "$out" ]; then
  mkdir -p "$out"
  cp "$bin" "$out/capstan"
  bin="$out/capstan"
fi
echo "$bin"
