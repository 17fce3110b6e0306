#!/usr/bin/env bash
# Renders 1,000 Apps for Kubernetes with the release `capstan render` and reports wall time and peak memory
# (GNU time). No peer renders Capstan manifests; the figure stands against the issue's budget.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install time
build_bins --release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 1000); do
  cat > "$dir/app-$i.yaml" <<YAML
apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: app-$i, namespace: team-$((i % 10))}
spec:
  replicas: 3
  run: {image: registry.example.com/app:$i, command: [server]}
  ports: [{name: http}, {name: admin}]
  probes: {readiness: {http: {path: /status, port: http}}}
  expose: [{port: 443, sticky: {cookie: {name: ROUTE}}}]
  volumes: [{name: data, scope: replica, env: DATA_DIR, size: 1Gi}]
  metrics: {port: admin}
YAML
done
for round in 1 2 3; do
  /usr/bin/time -f "round $round: %e s wall, %M KiB peak RSS" \
    "$CARGO_TARGET_DIR/release/capstan" render --target kubernetes "$dir" > "$dir/out.yaml"
done
echo "objects rendered: $(grep -c '^kind:' "$dir/out.yaml")"
