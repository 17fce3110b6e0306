#!/usr/bin/env bash
# Volume sync against cp -a and rsync -a, same machine, same run: a 1 GiB replica volume copied whole, then again
# after one file changed. Installs rsync when missing. Talks only to 127.0.0.1. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install rsync python3
build_bins --release
exec python3 bench/volume.py --bin "$CARGO_TARGET_DIR/release" "$@"
