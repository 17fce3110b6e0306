#!/usr/bin/env bash
# The main demo: the Data Center pattern on one machine. Installs what is missing (PostgreSQL, through apt), builds
# Capstan and Teamboard, runs `capstan up examples/ha-stack` (a PostgreSQL Database and two Teamboard nodes behind
# a sticky load balancer, served over HTTPS by a Gateway with a certificate Capstan issues from cert-manager's
# Issuer and Certificate), adds a little sample
# data, and prints the URL to open. Ctrl-C stops everything; the data
# stays in $CAPSTAN_DATA for next time.
# With DEMO_SMOKE=1 it checks the stack end to end (both nodes, a write, a search, a v1 -> v2 rolling upgrade), then
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

apt_install curl procps python3
command -v openssl >/dev/null || apt_install openssl
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  apt_install postgresql postgresql-client
fi
echo "== building capstan, capstan-hello and teamboard (release)"
build_bins --release
export PATH="$CARGO_TARGET_DIR/release:$PATH"
# Its own data directory: other walkthroughs (demo-gitops.sh, the README's tour) keep theirs apart.
export CAPSTAN_DATA="${CAPSTAN_DATA:-$PWD/.capstan/ha-stack}"
LISTEN="${CAPSTAN_LISTEN:-127.0.0.1:7470}"
WEB=http://127.0.0.1:8090
# The front door (examples/ha-stack/front-door.yaml): HTTPS on a Gateway, its certificate issued by Capstan
# (examples/ha-stack/certificates.yaml); the demo's root CA is written to $DEMO_TLS/ca.crt for curl and browsers.
HTTPS=https://teamboard.localhost:8443
DEMO_TLS="${CAPSTAN_DATA}-tls"
tls() { curl -fsS --cacert "$DEMO_TLS/ca.crt" "$@"; }
# A Secret's value, decoded.
secret_value() {
  capstan get secret "$1" -n "${3:-default}" -o json | python3 -c 'import base64,json,sys; sys.stdout.write(base64.b64decode(json.load(sys.stdin)["spec"]["data"][sys.argv[1]]).decode())' "$2"
}

started=$(date +%s.%N)
capstan up examples/ha-stack --listen "$LISTEN" &
UP=$!
# However the script ends (Ctrl-C, a failed step), Capstan is stopped and stops every replica.
trap 'kill -INT $UP 2>/dev/null || true; wait $UP 2>/dev/null || true' EXIT
export CAPSTAN_SERVER="https://$LISTEN"
echo "== waiting for the stack (PostgreSQL, then two Teamboard nodes)"
for i in $(seq 1 1800); do
  curl -fsS "$WEB/status" >/dev/null 2>&1 && break
  kill -0 $UP 2>/dev/null || { wait $UP; exit $?; }
  [ "$i" = 1800 ] && { echo "the stack did not become Ready in 3 minutes" >&2; capstan get apps >&2; exit 1; }
  sleep 0.1
done
capstan apply -f examples/ha-stack --wait --timeout 3m >/dev/null
mkdir -p "$DEMO_TLS"
secret_value demo-root-ca ca.crt cert-manager > "$DEMO_TLS/ca.crt"
for i in $(seq 1 100); do
  tls -o /dev/null "$HTTPS/status" 2>/dev/null && break
  [ "$i" = 100 ] && { echo "the Gateway did not serve the issued certificate in 10 s" >&2; capstan get certificates >&2; exit 1; }
  sleep 0.1
done
ready=$(date +%s.%N)
echo
capstan get databases
capstan get apps -o wide
capstan get gateways
capstan get clusterissuers
capstan get certificates
python3 -c "print('\nthe whole stack was Ready %.1f s after capstan up' % ($ready - $started))"

# Sample data, through the balancer, as user "paul": a customer with a billable and a non-billable account.
jar=$(mktemp)
api() { curl -fsS -b "$jar" -c "$jar" -H 'content-type: application/json' "$@"; }
api -d '{"user":"paul"}' "$WEB/api/login" >/dev/null
if [ "$(api "$WEB/api/issues?limit=1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')" = 0 ]; then
  api -d '{"key":"SOY","name":"Soylent Corp"}' "$WEB/api/customers"
  api -d '{"key":"SOYBIL","name":"Soylent billable","customer":"SOY","billable":true,"lead":"paul"}' "$WEB/api/accounts"
  api -d '{"key":"SOYTRN","name":"Soylent training","customer":"SOY","billable":false,"lead":"paul"}' "$WEB/api/accounts"
  id=$(api -d '{"title":"Nutrient model for Soylent Green","body":"Find the best mix of plankton and soy."}' "$WEB/api/issues" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["issue"]["id"])')
  api -d "{\"account\":\"SOYBIL\",\"day\":\"$(date +%F)\",\"hours\":8,\"billableHours\":7,\"description\":\"modelling\"}" \
    "$WEB/api/issues/$id/worklogs" >/dev/null
  api -d "{\"account\":\"SOYTRN\",\"day\":\"$(date +%F)\",\"hours\":2,\"description\":\"onboarding Taylor\"}" \
    "$WEB/api/issues/$id/worklogs" >/dev/null
  api -d '{"body":"The ocean supply is not what it was."}' "$WEB/api/issues/$id/comments" >/dev/null
  echo "sample data: issue #$id with a comment and a worklog for customer SOY"
fi

if [ "${DEMO_SMOKE:-}" = 1 ]; then
  echo "== smoke check"
  api -d '{"title":"smoke check issue","body":"written through the balancer"}' "$WEB/api/issues" >/dev/null
  for _ in $(seq 1 50); do
    api "$WEB/api/search?q=smoke" | grep -q "smoke check issue" && break
    sleep 0.1
  done
  api "$WEB/api/search?q=smoke" | grep -q "smoke check issue" || { echo "search did not find the new issue" >&2; exit 1; }
  for port in $(capstan get app teamboard -o json |
    python3 -c 'import json,sys; print(*[r["ports"]["http"] for r in json.load(sys.stdin)["status"]["replicaStatuses"]])'); do
    curl -fsS "http://127.0.0.1:$port/status" | grep -q '"state":"RUNNING"' || { echo "node on $port not running" >&2; exit 1; }
  done
  curl -fsS -b "$jar" "$WEB/" | grep -q "Teamboard v1" || { echo "the page does not show v1" >&2; exit 1; }
  echo "== the front door: HTTPS with HTTP/2 and HSTS, plain HTTP redirected"
  [ "$(tls -o /dev/null -w '%{http_version}' "$HTTPS/status")" = 2 ] || { echo "HTTPS did not speak HTTP/2" >&2; exit 1; }
  tls -D - -o /dev/null "$HTTPS/status" | grep -qi '^strict-transport-security: max-age=3600' ||
    { echo "no HSTS header over HTTPS" >&2; exit 1; }
  [ "$(curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' http://teamboard.localhost:8480/issues)" = \
    "301 $HTTPS/issues" ] || { echo "plain HTTP was not redirected to HTTPS" >&2; exit 1; }
  tls -b "$jar" -c "$jar" -H 'content-type: application/json' -d '{"user":"paul"}' "$HTTPS/api/login" >/dev/null
  tls -b "$jar" "$HTTPS/" | grep -q "Teamboard v1" || { echo "the page over HTTPS does not show v1" >&2; exit 1; }
  echo "== the certificate renewed on demand (cmctl's renew), swapped in live"
  before=$(secret_value teamboard-tls tls.crt | openssl x509 -noout -serial)
  capstan certificate renew teamboard
  for i in $(seq 1 100); do
    [ "$(secret_value teamboard-tls tls.crt | openssl x509 -noout -serial)" != "$before" ] && break
    [ "$i" = 100 ] && { echo "the certificate was not renewed in 10 s" >&2; capstan describe certificate teamboard >&2; exit 1; }
    sleep 0.1
  done
  renewed=$(secret_value teamboard-tls tls.crt | openssl x509 -noout -serial)
  for i in $(seq 1 100); do
    served=$(openssl s_client -connect 127.0.0.1:8443 -servername teamboard.localhost </dev/null 2>/dev/null | openssl x509 -noout -serial || true)
    [ "$served" = "$renewed" ] && break
    [ "$i" = 100 ] && { echo "the Gateway did not serve the renewed certificate" >&2; exit 1; }
    sleep 0.1
  done
  tls -b "$jar" "$HTTPS/" | grep -q "Teamboard v1" || { echo "the page over HTTPS failed after the renewal" >&2; exit 1; }
  echo "== the dashboard: signed in with the data directory's token, the overview lists the stack"
  ui_jar=$(mktemp)
  ui() { curl -fsS --cacert "$CAPSTAN_DATA/tls/ca.crt" -b "$ui_jar" -c "$ui_jar" "$@"; }
  ui -o /dev/null -H "Origin: https://$LISTEN" --data-urlencode "token@$CAPSTAN_DATA/token" \
    -d next=/ui "https://$LISTEN/ui/login"
  ui "https://$LISTEN/ui?kind=App" | grep -q '/ui/apps/default/teamboard' ||
    { echo "the dashboard's overview does not list the teamboard App" >&2; exit 1; }
  rm -f "$ui_jar"
  echo "== the same files for a cluster: the entry points become routes on its Gateway"
  # grep -c reads everything: with -q, an early exit would cut render's output (SIGPIPE, and pipefail says so).
  [ "$(capstan render --target kubernetes examples/ha-stack/ | grep -c '^kind: HTTPRoute')" -ge 1 ] ||
    { echo "the stack did not render to HTTPRoutes for Kubernetes" >&2; exit 1; }
  echo "== rolling upgrade v1 -> v2"
  sed 's/TEAMBOARD_VERSION: v1/TEAMBOARD_VERSION: v2/' examples/ha-stack/ha-stack.yaml | capstan apply -f -
  capstan rollout status teamboard --timeout 3m
  curl -fsS "$WEB/login" | grep -q "Teamboard v2" || { echo "the page does not show v2 after the upgrade" >&2; exit 1; }
  tls "$HTTPS/login" | grep -q "Teamboard v2" || { echo "HTTPS does not show v2 after the upgrade" >&2; exit 1; }
  rm -f "$jar"
  kill -INT $UP
  wait $UP
  if pgrep -f "$CARGO_TARGET_DIR/release/teamboard" >/dev/null || pgrep -u postgres -f "$CAPSTAN_DATA" >/dev/null; then
    echo "processes left behind" >&2
    exit 1
  fi
  echo "demo smoke check passed"
  exit 0
fi
rm -f "$jar"

cat <<TOUR

Open $HTTPS and sign in with any name (the certificate is issued by the demo's own CA: let the browser accept
it, or trust $DEMO_TLS/ca.crt). Plain http://teamboard.localhost:8480 redirects there,
and $WEB is the stack's direct entry point. Sessions live in one node's memory: the balancer's cookie keeps you
there. The node that served each page is in its header and footer; live updates from every node appear bottom right.

Capstan's dashboard: https://$LISTEN/ui (Capstan's own local CA: let the browser accept it, or trust
$CAPSTAN_DATA/tls/ca.crt), signed in with the data directory's token (the file $CAPSTAN_DATA/token).
Every object, live; the teamboard App's page restarts it or rolls it back.

Try, in another terminal:
  export PATH="$CARGO_TARGET_DIR/release:\$PATH" CAPSTAN_DATA="$CAPSTAN_DATA"
  capstan describe app teamboard              # nodes, volumes, probes, events
  capstan describe gateway front              # listeners, the certificate's Secret, attached routes
  curl --cacert $DEMO_TLS/ca.crt -sI $HTTPS/ | head -3   # HTTP/2, HSTS
  capstan get certificates; capstan describe certificate teamboard   # issued, renewal time, revision
  capstan certificate renew teamboard         # a new certificate now, served from the next handshake
  capstan render --target kubernetes examples/ha-stack/ | less   # the same files for a cluster: HTTPRoutes on its Gateway
  capstan logs teamboard -f                   # both nodes' output
  capstan metrics query capstan_lb_connections   # connections each listener holds, within its cap
  kill -9 \$(pgrep -f 'release/teamboard' | head -1)   # one node dies: its users move, the others never notice
  sed 's/TEAMBOARD_VERSION: v1/TEAMBOARD_VERSION: v2/' examples/ha-stack/ha-stack.yaml | capstan apply -f -
  capstan rollout status teamboard            # one node at a time, zero downtime; the header shows v2
  capstan volume sync teamboard --volume index --from 0 --to 1   # copy node 0's index to node 1
  capstan db backup teamboard-db              # pg_dump into the backups volume
  $WEB/reports                                # the monthly report per customer (billable vs non-billable)
Ctrl-C here stops everything; the database and volumes stay in $CAPSTAN_DATA.
TOUR
wait $UP
