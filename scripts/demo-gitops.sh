#!/usr/bin/env bash
# Builds Capstan and the examples (one package set with demo.sh, so the second script reuses the first's build), puts examples/hello in a Git repository and runs Capstan straight from it
# (`capstan up --git`), shows traffic through the balancer, then commits a change and syncs it. Prints where to look.
# Ctrl-C stops every replica. With DEMO_SMOKE=1 it checks each replica answers, then stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

apt_install curl procps python3
if ! command -v git >/dev/null; then apt_install git; fi
echo "== building capstan, capstan-hello and teamboard (release)"
build_bins --release
export PATH="$CARGO_TARGET_DIR/release:$PATH"
# Its own data directory: other walkthroughs (demo.sh, the README's tour) keep theirs apart.
export CAPSTAN_DATA="${CAPSTAN_DATA:-$PWD/.capstan/gitops}"
LISTEN="${CAPSTAN_LISTEN:-127.0.0.1:7470}"

# The deployment repository: examples/hello committed to a fresh Git repository.
REPO="$CAPSTAN_DATA/demo-repo"
rm -rf "$REPO" && mkdir -p "$REPO"
cp examples/hello/hello.yaml "$REPO/"
demo_git() { git -C "$REPO" -c user.name="Capstan demo" -c user.email=demo@example.com "$@"; }
demo_git init -q -b main
demo_git add -A
demo_git commit -q -m "hello: 2 replicas"

capstan up --git "file://$REPO" --listen "$LISTEN" &
UP=$!
# However the script ends (Ctrl-C, a failed step), Capstan is stopped and stops every replica.
trap 'kill -INT $UP 2>/dev/null || true; wait $UP 2>/dev/null || true' EXIT
export CAPSTAN_SERVER="https://$LISTEN"
for _ in $(seq 1 100); do
  capstan get apps >/dev/null 2>&1 && break
  kill -0 $UP 2>/dev/null || { wait $UP; exit $?; }
  sleep 0.1
done
echo "== following file://$REPO"
capstan sync now bootstrap -n capstan-system --timeout 60s
echo
capstan get apps -o wide
echo
echo "Through Capstan's load balancer, http://127.0.0.1:8080/ :"
for _ in 1 2 3 4; do echo "  new client      -> $(curl -fsS http://127.0.0.1:8080/)"; done
jar=$(mktemp)
for _ in 1 2 3; do echo "  client with a cookie jar -> $(curl -fsS -c "$jar" -b "$jar" http://127.0.0.1:8080/)"; done
rm -f "$jar"
echo
echo "== a commit to the repository: replicas 2 -> 3, then sync"
sed -i 's/replicas: 2/replicas: 3/' "$REPO/hello.yaml"
demo_git commit -q -am "hello: 3 replicas"
capstan sync now bootstrap -n capstan-system --timeout 60s
capstan get apps
cat <<TOUR

Try, in another terminal:
  export PATH="$CARGO_TARGET_DIR/release:\$PATH" CAPSTAN_DATA="$CAPSTAN_DATA"
  capstan get syncs -A; capstan describe sync bootstrap -n capstan-system   # revision, inventory, history
  edit $REPO/hello.yaml, git commit, then: capstan sync now bootstrap -n capstan-system
  capstan describe app hello        # replicas, probes, conditions, events
  capstan logs hello -f             # every replica's output
  kill -9 \$(pgrep -f capstan-hello | head -1); capstan get apps   # healed
  capstan rollout restart hello; capstan rollout status hello     # zero-downtime replacement
Ctrl-C here stops every replica.
TOUR

if [ "${DEMO_SMOKE:-}" = 1 ]; then
  kill -INT $UP
  wait $UP
  if pgrep -f "$CARGO_TARGET_DIR/release/capstan-hello" >/dev/null; then
    echo "replicas left behind" >&2
    exit 1
  fi
  echo "demo smoke check passed"
  exit 0
fi
wait $UP
