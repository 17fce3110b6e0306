#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine, then runs every test: format, lints, unit and end-to-end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

command -v cargo >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

# The GitOps tests build real repositories and serve them on loopback with `git daemon`, `git http-backend` and
# an OpenSSH server of their own.
if ! command -v git >/dev/null || [ ! -x "$(git --exec-path)/git-daemon" ]; then
  apt_install git
fi
[ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null || apt_install openssh-server openssh-client
# Databases are tested against the machine's PostgreSQL (server binaries, the `postgres` user, psql).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v psql >/dev/null || apt_install postgresql postgresql-client
# Discovery is tested against a real Prometheus.
[ -x /usr/bin/prometheus ] || apt_install prometheus
[ -x /usr/bin/prometheus-node-exporter ] || apt_install prometheus-node-exporter
[ -x /usr/bin/prometheus-alertmanager ] || apt_install prometheus-alertmanager
# ACME issuers are tested against Let's Encrypt's test server, Debian's pebble (with its DNS test server).
[ -x /usr/bin/pebble ] && [ -x /usr/bin/pebble-challtestsrv ] || apt_install pebble
# Web pages are tested in a real headless Chromium (Debian's), driven over the DevTools protocol.
command -v chromium >/dev/null || apt_install chromium
# Training is tested with real TensorFlow (CPU) in a venv kept under ~/.cache (created once).
CAPSTAN_TF_PYTHON="$(scripts/setup-tf.sh)"
export CAPSTAN_TF_PYTHON
# Rendered Kubernetes objects are validated against the Kubernetes OpenAPI schemas by kubernetes-validate (a venv
# kept under ~/.cache, created once).
CAPSTAN_K8S_VALIDATE="$(scripts/setup-k8s-validate.sh)"
export CAPSTAN_K8S_VALIDATE

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
# Plain `cargo test` skips the tests that need the tools set up above; here every test runs.
export CAPSTAN_HEAVY_TESTS=1
# `capstan up` writes its context into the client configuration: tests keep theirs apart from the user's.
CAPSTAN_CONFIG="$(mktemp -d)/capstan-config"
export CAPSTAN_CONFIG
cargo test --workspace
# Adding a kind (ARCHITECTURE.md): a throwaway kind, built only with the feature `throwaway-kind`, goes through the
# checklist and is listed, decoded, validated, stored, reconciled and printed like every kind.
echo "== the throwaway kind"
cargo clippy -p capstan-cli -p capstan-e2e --features capstan-cli/throwaway-kind,capstan-e2e/throwaway-kind \
  --all-targets --quiet -- -D warnings
cargo test -p capstan-cli --features throwaway-kind --lib
cargo test -p capstan-e2e --features throwaway-kind --test throwaway_kind
# The release build's training run (scripts/build-release.sh), briefly, on the debug build: it must keep working.
echo "== release training run (smoke, debug build)"
apt_install wrk nghttp2-client openssl
build_bins
cargo build --quiet -p capstan-serving --example fixture_model
python3 scripts/pgo_train.py --capstan "$CARGO_TARGET_DIR/debug/capstan" --bin "$CARGO_TARGET_DIR/debug" \
  --fixture-model "$CARGO_TARGET_DIR/debug/examples/fixture_model" --seconds 2
