#!/usr/bin/env python3
"""Capstan's scraper and store against Prometheus (Debian's), same run, same targets: CPU per ingested sample,
resident memory per active series, and the latency of rate() over one hour of data.

Ingestion: one target server on 127.0.0.1 serves TARGETS expositions of SERIES counters each (every value changes
on every scrape). Capstan (crates/capstan-observe/examples/ingest.rs: the scraper and store `capstan up` runs) and
then Prometheus scrape all of them at the same interval for the same time; CPU is counted after a warm-up of two
intervals. Queries: one hour of samples for QSERIES series at 15 s is written as OpenMetrics, loaded into
Capstan's store and backfilled into Prometheus with promtool; the same query runs on both.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from common import exposition_server, free_port, rss_kib  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def serve_targets(port, series):
    start = time.time()

    def lines_for(path):
        t = path.rsplit("/", 1)[-1]
        tick = int((time.time() - start) * 10)
        lines = ["# HELP bench_requests_total Requests.", "# TYPE bench_requests_total counter"]
        return lines + [f'bench_requests_total{{target="{t}",id="{j}"}} {tick * (j % 7 + 1)}' for j in range(series)]

    srv = exposition_server(port, lines_for)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def prom_query(port, q, t=None):
    params = {"query": q}
    if t is not None:
        params["time"] = str(t)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(params), timeout=120) as r:
        return json.load(r)["data"]["result"]


def prom_metric(port, name):
    """The sum of a metric in Prometheus' own /metrics (it does not scrape itself here)."""
    total = 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def start_prometheus(d, config, storage, port):
    with open(f"{d}/prometheus.yml", "w") as f:
        f.write(config)
    p = subprocess.Popen(["/usr/bin/prometheus", f"--config.file={d}/prometheus.yml", f"--storage.tsdb.path={storage}",
                          f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                         stderr=open(f"{storage}.log", "w"))
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
            return p
        except Exception:
            time.sleep(0.1)
    raise TimeoutError("prometheus did not become ready: " + open(f"{storage}.log").read()[-2000:])


def ingestion(a, d, example):
    port = free_port()
    srv = serve_targets(port, a.series)
    urls = [f"http://127.0.0.1:{port}/t/{i}" for i in range(a.targets)]
    with open(f"{d}/urls.txt", "w") as f:
        f.write("\n".join(urls) + "\n")

    out = subprocess.run([example, "ingest", f"{d}/urls.txt", str(a.interval), str(a.seconds)],
                         check=True, capture_output=True, text=True).stdout
    cap = json.loads(out)

    groups = ",\n".join(f"{{targets: ['127.0.0.1:{port}'], labels: {{__metrics_path__: /t/{i}}}}}" for i in range(a.targets))
    config = f"global: {{scrape_interval: {a.interval:g}s, scrape_timeout: {min(a.interval, 10):g}s}}\n" \
             f"scrape_configs:\n  - job_name: bench\n    static_configs: [\n{groups}\n    ]\n"
    pport = free_port()
    p = start_prometheus(d, config, f"{d}/prom-ingest", pport)
    idle_rss = rss_kib(p.pid) * 1024
    try:
        # Prometheus starts scraping a few seconds after it is ready; the warm-up counts from the first sample.
        for _ in range(600):
            if prom_metric(pport, "prometheus_tsdb_head_samples_appended_total") > 0:
                break
            time.sleep(0.1)
        time.sleep(a.interval * 2)
        cpu0 = cpu_seconds(p.pid)
        s0 = prom_metric(pport, "prometheus_tsdb_head_samples_appended_total")
        time.sleep(a.seconds - a.interval * 2)
        cpu1 = cpu_seconds(p.pid)
        s1 = prom_metric(pport, "prometheus_tsdb_head_samples_appended_total")
        series = prom_metric(pport, "prometheus_tsdb_head_series")
        rss = rss_kib(p.pid) * 1024
    finally:
        p.terminate()
        p.wait(timeout=60)
        srv.shutdown()
    prom = {"samples": s1 - s0, "cpu_seconds": cpu1 - cpu0, "series": series, "rss_bytes": rss, "rss_before_bytes": idle_rss}
    return cap, prom


def queries(a, d, example):
    end = int(time.time()) - 1800
    end -= end % 60
    start = end - 3600
    path = f"{d}/hour.om"
    with open(path, "w") as f:
        f.write("# TYPE bench_hour counter\n")
        for j in range(a.qseries):
            for t in range(start, end + 1, 15):
                f.write(f'bench_hour_total{{id="{j}",shard="{j % 10}"}} {(t - start) * (j % 5 + 1)} {t}\n')
        f.write("# EOF\n")
    out = {}
    qs = ["sum(rate(bench_hour_total[1h]))", "sum by (shard) (rate(bench_hour_total[1h]))"]
    for q in qs:
        r = subprocess.run([example, "query", path, q, str(end), "7"], check=True, capture_output=True, text=True).stdout
        out.setdefault(q, {})["capstan"] = json.loads(r)["median_seconds"]
    subprocess.run(["/usr/bin/promtool", "tsdb", "create-blocks-from", "openmetrics", path, f"{d}/prom-hour"],
                   check=True, capture_output=True)
    pport = free_port()
    p = start_prometheus(d, "global: {scrape_interval: 15s}\n", f"{d}/prom-hour", pport)
    try:
        for _ in range(100):
            if prom_query(pport, "count(bench_hour_total)", end):
                break
            time.sleep(0.2)
        def timed(q):
            ts = []
            for _ in range(7):
                t0 = time.perf_counter()
                prom_query(pport, q, end)
                ts.append(time.perf_counter() - t0)
            return sorted(ts)[3]
        baseline = timed("vector(1)")
        for q in qs:
            out[q]["prometheus"] = timed(q)
        out["http_baseline"] = baseline
    finally:
        p.terminate()
        p.wait(timeout=60)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--example", required=True)
    ap.add_argument("--targets", type=int, default=200)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=15)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--qseries", type=int, default=10000)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="capstan-bench-mon-")
    try:
        cap, prom = ingestion(a, d, a.example)
        q = queries(a, d, a.example)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    json.dump({"capstan": cap, "prometheus": prom, "queries": q}, open("/tmp/capstan-bench-monitoring.json", "w"), indent=1)

    def per_core(x):
        return x["samples"] / x["cpu_seconds"] if x["cpu_seconds"] else float("inf")

    def per_series(x, idle):
        return ((x["rss_bytes"] - (x["rss_before_bytes"] if idle else 0)) / max(x["series"], 1))

    print(f"{a.targets} targets x {a.series} series, every {a.interval:g} s, {a.seconds:g} s each (CPU after a warm-up of two intervals).")
    print()
    print("| | Capstan | Prometheus | Capstan / Prometheus |")
    print("|---|---|---|---|")
    print(f"| samples ingested | {cap['samples']:.0f} | {prom['samples']:.0f} | |")
    print(f"| CPU per sample | {cap['cpu_seconds'] / max(cap['samples'], 1) * 1e6:.2f} µs | {prom['cpu_seconds'] / max(prom['samples'], 1) * 1e6:.2f} µs | {(cap['cpu_seconds'] / max(cap['samples'], 1)) / (prom['cpu_seconds'] / max(prom['samples'], 1)):.2f} |")
    print(f"| samples per CPU-second (per core) | {per_core(cap):.0f} | {per_core(prom):.0f} | {per_core(cap) / per_core(prom):.2f} |")
    print(f"| active series | {cap['series']:.0f} | {prom['series']:.0f} | |")
    print(f"| resident memory | {cap['rss_bytes'] / 2**20:.0f} MiB | {prom['rss_bytes'] / 2**20:.0f} MiB | {cap['rss_bytes'] / prom['rss_bytes']:.2f} |")
    print(f"| memory per series (all of RSS) | {per_series(cap, False):.0f} B | {per_series(prom, False):.0f} B | {per_series(cap, False) / per_series(prom, False):.2f} |")
    print(f"| memory per series (above idle) | {per_series(cap, True):.0f} B | {per_series(prom, True):.0f} B | {per_series(cap, True) / per_series(prom, True):.2f} |")
    print(f"| failed scrapes | {cap['failed_scrapes']} | | |")
    print()
    print(f"Queries over one hour of {a.qseries} series at 15 s (medians of 7; Prometheus over HTTP, whose own floor, `vector(1)`, is {q['http_baseline'] * 1000:.1f} ms):")
    print()
    print("| query | Capstan | Prometheus | Capstan / Prometheus |")
    print("|---|---|---|---|")
    for k, v in q.items():
        if k == "http_baseline":
            continue
        print(f"| `{k}` | {v['capstan'] * 1000:.1f} ms | {v['prometheus'] * 1000:.1f} ms | {v['capstan'] / v['prometheus']:.2f} |")


if __name__ == "__main__":
    main()
