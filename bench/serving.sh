#!/usr/bin/env bash
# Model serving: Capstan's server (`capstan serve-model`, tract) against Python HTTP servers running the same models
# with onnxruntime and with TensorFlow, same run, same load (wrk, row-format :predict, one instance per request),
# for a small dense model and a small CNN. Also the cost of Capstan's orchestration on a training run against
# starting the same tasks by hand. Talks only to 127.0.0.1. Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install wrk python3
PY="$(scripts/setup-tf.sh)"
"$PY" -c 'import onnxruntime' 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check 'onnxruntime==1.17.3'
build_bins --release
exec "$PY" bench/serving.py --bin "$CARGO_TARGET_DIR/release" "$@"
