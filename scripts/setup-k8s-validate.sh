#!/usr/bin/env bash
# Creates (once) the Python virtualenv holding kubernetes-validate, which checks objects against the Kubernetes
# OpenAPI schemas (strict: unknown fields are errors), and prints the path of its command. Kept outside the clone:
# $CAPSTAN_K8S_VALIDATE_VENV or ~/.cache/capstan/venv-k8s-validate.
set -euo pipefail
VENV="${CAPSTAN_K8S_VALIDATE_VENV:-$HOME/.cache/capstan/venv-k8s-validate}"
if [ -x "$VENV/bin/kubernetes-validate" ] && "$VENV/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "$VENV/bin/kubernetes-validate"
  exit 0
fi
echo "setting up $VENV (kubernetes-validate 1.37.0 with the schemas of every Kubernetes release): about 110 MB" >&2
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0' >&2
echo "$VENV/bin/kubernetes-validate"
