#!/usr/bin/env bash
# Capstan against supervisord, same machine, same run: control-plane memory idle and with 50 Apps x 2 replicas,
# time from SIGKILL of a replica to its replacement serving and Ready, and time for 200 Apps to become Ready.
# Installs supervisor from Debian when missing. Talks only to 127.0.0.1. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install supervisor python3
build_bins --release
exec python3 bench/supervisor.py --bin "$CARGO_TARGET_DIR/release" "$@"
