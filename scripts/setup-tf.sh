#!/usr/bin/env bash
# Creates (once) the Python virtualenv with TensorFlow (CPU) that the training examples and tests run in, and prints
# its python. Kept outside the clone, like the build cache: $CAPSTAN_TF_VENV or ~/.cache/capstan/venv-tf.
# TensorFlow 2.15 is pinned: it still has Keras 2's tf.distribute strategies and works with tf2onnx 1.16.
set -euo pipefail
VENV="${CAPSTAN_TF_VENV:-$HOME/.cache/capstan/venv-tf}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import tensorflow, tf2onnx' >/dev/null 2>&1; then
  echo "$VENV/bin/python"
  exit 0
fi
echo "setting up $VENV (tensorflow-cpu 2.15, tf2onnx): a one-time download of about 250 MB" >&2
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  'tensorflow-cpu==2.15.1' 'tf2onnx==1.16.1' 'onnx==1.15.0' 'numpy<2' >&2
"$VENV/bin/python" -c 'import tensorflow as tf; print("tensorflow", tf.__version__)' >&2
echo "$VENV/bin/python"
