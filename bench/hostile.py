#!/usr/bin/env python3
"""Hostile input, measured: (1) latency of the API and of an entry point while 20,000 idle connections are held
open against it, next to the same latency idle; (2) memory and CPU of Capstan and of Prometheus 2.42 under a
target that brings 45,000 new series at every scrape (a request id in a label), with the same per-scrape limits.

(1) `capstan up` (release build, header timeout 120 s so that the idle connections stay for the whole run, the
machine's open-file limit) with 2 `capstan-hello` replicas behind an entry point. wrk (1 thread, 8 connections,
keep-alive) measures `/healthz` on the API and `/` on the entry point for SECONDS each; then helper processes open
IDLE connections to the entry point (every other one sends half a request header and stops; 10,000 per helper, as
the open-file limit bounds each process), this script reads how many Capstan holds, and wrk measures again.

(2) A churning target (this script, `--serve-churn`) answers SERIES new series per scrape. Capstan runs it as an
App with `spec.metrics` every INTERVAL s; Prometheus scrapes its own copy of the target with the same interval and
`sample_limit`, `label_limit`, `label_name_length_limit` and `label_value_length_limit` set to Capstan's defaults.
Both run CHURN_SECONDS; reported: series held, resident memory, CPU seconds.
"""

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from common import Capstan, exposition_server, free_port, http_ok, rss_kib, wait_until, wrk  # noqa: E402
from monitoring import cpu_seconds, prom_metric, start_prometheus  # noqa: E402


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def lb_gauge(api_port, name, listener):
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f'{name}{{listener="{listener}"}} '):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def hold_idle(port, count):
    """Opens `count` connections to 127.0.0.1:`port` (every other one sends half a request header), says how many
    it opened, and keeps them until its standard input closes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    for i in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 2:
                s.sendall(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Trickle: ")
            held.append(s)
        except OSError:
            break
    print(len(held), flush=True)
    sys.stdin.read()


def idle_connections(a):
    # The open-file limit of this machine bounds each process: the connections are held by helpers of 10,000 each,
    # and Capstan runs with the limit it is given (its connection budget follows from it).
    # Plain HTTP on the loopback: the flood holds bare TCP connections, and /metrics is read without TLS.
    cap = Capstan(a.bin, args=["--header-timeout", "120", "--plain-http"], exe=a.exe)
    lb = free_port()
    try:
        cap.apply([cap.app("web", 2, extra={"expose": [{"port": lb}]})])
        wait_until(lambda: cap.all_ready(1), 60, 0.2)
        wait_until(lambda: http_ok(lb, "/"), 30, 0.05)
        api = f"http://127.0.0.1:{cap.port}/healthz"
        entry = f"http://127.0.0.1:{lb}/"
        base = {"api": wrk(api, a.seconds, 8, threads=1), "entry": wrk(entry, a.seconds, 8, threads=1)}
        before = {"rss_kib": rss_kib(cap.proc.pid), "fds": open_fds(cap.proc.pid)}
        t0 = time.monotonic()
        helpers, opened = [], 0
        left = a.idle
        while left > 0:
            n = min(left, 10000)
            h = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--hold-idle", str(lb), "--idle", str(n)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            opened += int(h.stdout.readline().strip() or 0)
            helpers.append(h)
            left -= n
        opened_in = time.monotonic() - t0
        listener = f"default/web/http-{lb}"
        time.sleep(2)
        holding = lb_gauge(cap.port, "capstan_lb_connections", listener)
        loaded = {"api": wrk(api, a.seconds, 8, threads=1), "entry": wrk(entry, a.seconds, 8, threads=1)}
        after = {"rss_kib": rss_kib(cap.proc.pid), "fds": open_fds(cap.proc.pid),
                 "held": lb_gauge(cap.port, "capstan_lb_connections", listener),
                 "evicted": lb_gauge(cap.port, "capstan_lb_connections_evicted_total", listener),
                 "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}
        for h in helpers:
            h.stdin.close()
            h.wait(timeout=60)
        return {"idle": a.idle, "opened": opened, "opened_in_s": opened_in, "holding": holding, "base": base,
                "loaded": loaded, "before": before, "after": after}
    finally:
        cap.stop()


def serve_churn(port, series):
    """Answers `series` new series per request: a request id in a label, as a badly instrumented app does."""
    state = {"n": 0}
    lock = threading.Lock()

    def lines_for(_path):
        with lock:
            n = state["n"]
            state["n"] += 1
        return ["# TYPE churn_request gauge"] + [f'churn_request{{request_id="{n * series + j}"}} 1' for j in range(series)]

    return exposition_server(port, lines_for)


def churn_capstan(a):
    cap = Capstan(a.bin, args=["--plain-http"], exe=a.exe)
    try:
        app = {"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": "churn"},
               "spec": {"replicas": 1,
                        "run": {"command": [sys.executable, os.path.abspath(__file__), "--serve-churn",
                                            "--series", str(a.series)]},
                        "ports": [{"name": "http"}],
                        "metrics": {"port": "http", "interval": f"{a.interval:g}s", "timeout": f"{a.interval:g}s"}}}
        cap.apply([app])
        wait_until(lambda: (cap.api("GET", "/api/v1/namespaces/default/apps/churn").get("status") or {}).get("replicaStatuses"),
                   60, 0.2)
        cpu0, t0 = cpu_seconds(cap.proc.pid), time.monotonic()
        peak = 0
        while time.monotonic() - t0 < a.churn_seconds:
            peak = max(peak, rss_kib(cap.proc.pid))
            time.sleep(0.5)
        cpu = cpu_seconds(cap.proc.pid) - cpu0
        series = cap.api("GET", "/prometheus/api/v1/status/tsdb")["data"]["headStats"]["numSeries"]
        targets = cap.api("GET", "/prometheus/api/v1/targets")["data"]["activeTargets"]
        errors = [t["lastError"] for t in targets if t["lastError"]]
        return {"series": series, "peak_rss_kib": peak, "rss_kib": rss_kib(cap.proc.pid), "cpu_seconds": cpu,
                "last_errors": errors}
    finally:
        cap.stop()


def churn_prometheus(a, d):
    port = free_port()
    srv = serve_churn(port, a.series)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    config = (f"global: {{scrape_interval: {a.interval:g}s, scrape_timeout: {a.interval:g}s}}\n"
              "scrape_configs:\n  - job_name: churn\n"
              "    sample_limit: 50000\n    label_limit: 64\n    label_name_length_limit: 256\n"
              "    label_value_length_limit: 4096\n"
              f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
    pport = free_port()
    p = start_prometheus(d, config, f"{d}/prom-churn", pport)
    try:
        cpu0, t0 = cpu_seconds(p.pid), time.monotonic()
        peak = 0
        while time.monotonic() - t0 < a.churn_seconds:
            peak = max(peak, rss_kib(p.pid))
            time.sleep(0.5)
        cpu = cpu_seconds(p.pid) - cpu0
        series = prom_metric(pport, "prometheus_tsdb_head_series")
        return {"series": series, "peak_rss_kib": peak, "rss_kib": rss_kib(p.pid), "cpu_seconds": cpu}
    finally:
        p.terminate()
        p.wait(timeout=120)
        srv.shutdown()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--pgo-bin", help="also measure this capstan binary (scripts/build-release.sh's)")
    ap.add_argument("--idle", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--series", type=int, default=45000)
    ap.add_argument("--interval", type=float, default=5)
    ap.add_argument("--churn-seconds", type=float, default=90)
    ap.add_argument("--serve-churn", action="store_true", help="run as the churning target (PORT from the env)")
    ap.add_argument("--hold-idle", type=int, metavar="PORT", help="run as a holder of --idle idle connections")
    ap.add_argument("--only", choices=["idle", "churn"])
    a = ap.parse_args()
    if a.serve_churn:
        serve_churn(int(os.environ["PORT"]), a.series).serve_forever()
        return
    if a.hold_idle:
        hold_idle(a.hold_idle, a.idle)
        return
    builds = [("release", None)] + ([("PGO release", a.pgo_bin)] if a.pgo_bin else [])
    d = tempfile.mkdtemp(prefix="capstan-bench-hostile-")
    out = {}
    try:
        for name, exe in builds:
            a.exe = exe
            if a.only in (None, "idle"):
                out.setdefault("idle", {})[name] = idle_connections(a)
            if a.only in (None, "churn"):
                out.setdefault("churn", {})[name] = churn_capstan(a)
        if a.only in (None, "churn"):
            out["churn"]["prometheus"] = churn_prometheus(a, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    json.dump(out, open("/tmp/capstan-bench-hostile.json", "w"), indent=1)
    for name, i in out.get("idle", {}).items():
        print(f"{name}: {i['opened']} idle connections opened in {i['opened_in_s']:.1f} s; Capstan (open-file limit "
              f"{i['after']['fd_limit']}) held {i['after']['held']:.0f} (evicted {i['after']['evicted']:.0f}); RSS "
              f"{i['before']['rss_kib'] / 1024:.1f} → {i['after']['rss_kib'] / 1024:.1f} MiB, fds {i['before']['fds']} → "
              f"{i['after']['fds']}")
        print()
        print("| wrk, 1 thread, 8 connections | idle p50 | idle p99 | with idle connections p50 | p99 | p99 ratio | req/s ratio | errors |")
        print("|---|---|---|---|---|---|---|---|")
        for k, label in (("api", "API `/healthz`"), ("entry", "entry point `/`")):
            b, l = i["base"][k], i["loaded"][k]
            print(f"| {label} | {b['p50_ms']:.2f} ms | {b['p99_ms']:.2f} ms | {l['p50_ms']:.2f} ms | {l['p99_ms']:.2f} ms "
                  f"| **{l['p99_ms'] / b['p99_ms']:.2f}** | {l['rps'] / b['rps']:.2f} | {b['errors']} / {l['errors']} |")
        print()
    if "churn" in out:
        p = out["churn"]["prometheus"]
        print(f"{a.series} new series per scrape, every {a.interval:g} s, {a.churn_seconds:g} s")
        print()
        print("| | Capstan | Prometheus 2.42 | Capstan / Prometheus |")
        print("|---|---|---|---|")
        for name, c in out["churn"].items():
            if name == "prometheus":
                continue
            print(f"| {name}: series held at the end | {c['series']:,.0f} | {p['series']:,.0f} | {c['series'] / max(p['series'], 1):.2f} |")
            print(f"| {name}: peak resident memory | {c['peak_rss_kib'] / 1024:.0f} MiB | {p['peak_rss_kib'] / 1024:.0f} MiB "
                  f"| **{c['peak_rss_kib'] / max(p['peak_rss_kib'], 1):.2f}** |")
            print(f"| {name}: CPU seconds | {c['cpu_seconds']:.1f} | {p['cpu_seconds']:.1f} | **{c['cpu_seconds'] / max(p['cpu_seconds'], 0.01):.2f}** |")
            print()
            print(f"{name}: Capstan's target errors:", c["last_errors"])


if __name__ == "__main__":
    main()
