#!/usr/bin/env python3
"""The training run of the release build (scripts/build-release.sh): an instrumented `capstan` serves what it
serves in production — the load balancer (round-robin, sticky cookie, new connection per request, TCP
passthrough), a Gateway's HTTPS listener (keep-alive, a new TLS connection per request, HTTP/2) and an HTTP listener
with 100 routes, the API and PromQL queries, supervision, and a model server — and writes its profile at exit.
Any failed request stops it with an error. scripts/test.sh runs it briefly on the debug build, so that it keeps
working as the API changes."""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from common import free_port, wrk  # noqa: E402
from lb import Capstan, wait_http  # noqa: E402
from serving import post_script  # noqa: E402
from tls import PATH, certificate, h2load, wait_tls  # noqa: E402
from tls import Capstan as GatewayCapstan  # noqa: E402


def balancer_and_api(capstan, bindir, seconds):
    port, sticky, tcp = free_port(), free_port(), free_port()
    c = Capstan(bindir, port, sticky, api=free_port(), exe=capstan,
                expose=[{"name": "raw", "port": tcp, "protocol": "tcp"}])
    try:
        path = "/bytes/1024"
        for p in (port, sticky, tcp):
            wait_http(f"http://127.0.0.1:{p}{path}", 60)
        cookie = urllib.request.urlopen(f"http://127.0.0.1:{sticky}/").headers["Set-Cookie"].split(";")[0]
        for url, secs, conns, headers in [
            (f"http://127.0.0.1:{port}{path}", seconds, 50, ()),
            (f"http://127.0.0.1:{sticky}{path}", seconds / 2, 50, [f"Cookie: {cookie}"]),
            (f"http://127.0.0.1:{port}{path}", seconds / 4, 8, ["Connection: close"]),
            (f"http://127.0.0.1:{tcp}{path}", seconds / 4, 8, ()),
        ]:
            r = wrk(url, max(1, round(secs)), conns, headers)
            print(f"  {url} {'; '.join(headers)[:40]}: {r['requests']} requests, {r['errors']} errors", flush=True)
            if r["errors"] or not r["requests"]:
                raise SystemExit(f"the balancer failed requests during training ({url})")
        # The API a dashboard and the CLI use, and the monitoring queries behind them.
        queries = ["up", 'sum by (replica) (rate(capstan_lb_requests_total[1m]))',
                   'histogram_quantile(0.99, sum by (le) (rate(capstan_lb_request_duration_seconds_bucket[1m])))']
        for i in range(60):
            c.call("GET", "/api/v1/namespaces/default/apps/bench")
            c.call("GET", "/api/v1/apps")
            c.call("GET", "/prometheus/api/v1/query?query=" + urllib.parse.quote(queries[i % len(queries)]))
        c.call("GET", "/prometheus/api/v1/targets")
        c.call("POST", "/api/v1/namespaces/default/apps/bench/restart", {})
        time.sleep(3)  # a rolling restart: replicas drained, replaced, probed
        print("  API, queries and a rolling restart done", flush=True)
    finally:
        c.stop()
        subprocess.run(["rm", "-rf", c.data])


def gateway(capstan, bindir, seconds):
    d = tempfile.mkdtemp(prefix="pgo-tls-")
    crt, key = certificate(d)
    https, http, expose = free_port(), free_port(), free_port()
    c = GatewayCapstan(bindir, capstan, crt, key, https, http, expose, 100)
    try:
        wait_tls(https)
        wait_http(f"http://127.0.0.1:{expose}{PATH}", 60)
        for url, secs, conns, headers in [
            (f"https://127.0.0.1:{https}{PATH}", seconds / 2, 50, ()),
            (f"https://127.0.0.1:{https}{PATH}", seconds / 4, 8, ["Connection: close"]),
            (f"http://127.0.0.1:{http}{PATH}", seconds / 4, 50, ["Host: r99.bench.test"]),
        ]:
            r = wrk(url, max(1, round(secs)), conns, headers)
            print(f"  {url} {'; '.join(headers)[:40]}: {r['requests']} requests, {r['errors']} errors", flush=True)
            if r["errors"] or not r["requests"]:
                raise SystemExit(f"the gateway failed requests during training ({url})")
        r = h2load(f"https://127.0.0.1:{https}{PATH}", max(1, round(seconds / 4)), 8, 10)
        print(f"  HTTP/2 ({r['protocol']}): {r['rps']:.0f} req/s, {r['failed']} failed", flush=True)
        if r["failed"] or r["protocol"] != "h2":
            raise SystemExit("the gateway failed HTTP/2 requests during training")
    finally:
        c.stop()
        subprocess.run(["rm", "-rf", c.data, d])


def model_server(capstan, fixture, seconds):
    with tempfile.TemporaryDirectory(prefix="pgo-model-") as d:
        subprocess.run([fixture, os.path.join(d, "dense")], check=True)
        port = free_port()
        p = subprocess.Popen([capstan, "serve-model", "--model-name", "dense", "--model-base-path",
                              os.path.join(d, "dense"), "--rest-api-port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 60)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/dense/metadata").read()
            rows = [[(i * 7 + j) % 10 / 10 for j in range(16)] for i in range(8)]
            script = post_script(json.dumps({"instances": rows}), d)
            r = wrk(f"http://127.0.0.1:{port}/v1/models/dense:predict", max(1, round(seconds / 2)), 8, script=script)
            print(f"  model server: {r['requests']} predictions, {r['errors']} errors", flush=True)
            if r["errors"] or not r["requests"]:
                raise SystemExit("the model server answered with errors during training")
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--capstan", required=True, help="the instrumented capstan binary")
    ap.add_argument("--bin", required=True, help="the directory holding capstan-hello (the backends)")
    ap.add_argument("--fixture-model", required=True, help="the fixture_model example of capstan-serving")
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    print("training: the load balancer, the API and supervision", flush=True)
    balancer_and_api(a.capstan, a.bin, a.seconds)
    print("training: a Gateway's HTTPS and HTTP listeners", flush=True)
    gateway(a.capstan, a.bin, a.seconds)
    print("training: the model server", flush=True)
    model_server(a.capstan, a.fixture_model, a.seconds)


if __name__ == "__main__":
    main()
