#!/usr/bin/env python3
"""The HA stack measured: time from `capstan up examples/ha-stack` to the whole stack Ready (cold, with initdb, and
warm), and Teamboard's throughput for reads, searches and writes through Capstan's balancer, through HAProxy in
front of the same two nodes, and straight to one node. Run through bench/teamboard.sh."""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from common import api_call, free_port, wait_until, wrk  # noqa: E402
from lb import cpu_seconds, children, haproxy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stack_dir(bindir, lb_port):
    """The example's manifest, with the release binary's path and a free balancer port."""
    src = open(os.path.join(ROOT, "examples/ha-stack/ha-stack.yaml")).read()
    d = tempfile.mkdtemp(prefix="ha-stack-")
    open(f"{d}/ha-stack.yaml", "w").write(
        src.replace("command: [teamboard]", f"command: [{bindir}/teamboard]").replace("port: 8090", f"port: {lb_port}"))
    return d


class Stack:
    def __init__(self, bindir, manifests, data):
        self.bindir, self.data = bindir, data
        self.port = free_port()
        env = dict(os.environ, CAPSTAN_DATA=data, CAPSTAN_LOG="warn")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([f"{bindir}/capstan", "up", manifests, "--listen", f"127.0.0.1:{self.port}"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: os.path.exists(f"{data}/server.json"), 20, 0.01)
        self.token = open(f"{data}/token").read().strip()

    def api(self, path):
        return api_call(self.data, self.token, "GET", path, timeout=10)

    def ready(self):
        """Both Apps Ready with every replica's process alive (not a status left from before a restart)."""
        try:
            items = self.api("/api/v1/apps")["items"]
        except Exception:
            return False
        if len(items) != 2:
            return False
        for o in items:
            st = o.get("status") or {}
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", [])):
                return False
            for r in st.get("replicaStatuses", []):
                if not r.get("ready") or not r.get("pid") or not os.path.exists(f"/proc/{r['pid']}"):
                    return False
        return True

    def wait_ready(self):
        wait_until(self.ready, 180, 0.02)
        return time.monotonic() - self.started

    def node_ports(self):
        app = self.api("/api/v1/namespaces/default/apps/teamboard")
        return [r["ports"]["http"] for r in app["status"]["replicaStatuses"]]

    def pids(self):
        app = self.api("/api/v1/namespaces/default/apps/teamboard")
        return [r["pid"] for r in app["status"]["replicaStatuses"]]

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)


def call(port, method, path, body=None, token=None, cookie=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = cookie
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers.get_all("Set-Cookie") or [], json.loads(r.read() or b"null")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--issues", type=int, default=2000)
    a = ap.parse_args()

    lb = free_port()
    manifests = stack_dir(a.bin, lb)

    # Time to Ready, cold: a new data directory (initdb, schema, empty indexes).
    cold, warm = [], []
    data, data_dirs = None, []
    for _ in range(a.rounds):
        data = tempfile.mkdtemp(prefix="capstan-bench-ha-")
        data_dirs.append(data)
        s = Stack(a.bin, manifests, data)
        cold.append(s.wait_ready())
        s.stop()

    # Seed the last one through the balancer, with a personal access token.
    s = Stack(a.bin, manifests, data)
    s.wait_ready()
    cookies, _ = call(lb, "POST", "/api/login", {"user": "bench"})
    session = "; ".join(c.split(";")[0] for c in cookies)
    _, tok = call(lb, "POST", "/api/tokens", cookie=session)
    token = tok["token"]
    words = ["plankton", "soy", "nutrient", "invoice", "upgrade", "index", "session", "balancer"]
    t0 = time.monotonic()
    for i in range(a.issues):
        call(lb, "POST", "/api/issues", {"title": f"seed {i} {words[i % len(words)]}",
                                         "body": f"about {words[(i * 3) % len(words)]} and {words[(i * 5) % len(words)]}"},
             token=token)
    seed_s = time.monotonic() - t0

    def indexed(nodes):
        return all(json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/status"))["index"]["documents"] >= a.issues
                   for p in nodes)
    wait_until(lambda: indexed(s.node_ports()), 60, 0.1)
    s.stop()

    # Warm: the same data again; both indexes are opened, not rebuilt.
    for _ in range(a.rounds):
        s = Stack(a.bin, manifests, data)
        warm.append(s.wait_ready())
        s.stop()

    s = Stack(a.bin, manifests, data)
    s.wait_ready()
    nodes = s.node_ports()
    wait_until(lambda: indexed(nodes), 60, 0.1)

    d = tempfile.mkdtemp(prefix="bench-haproxy-")
    hp, hp_sticky = free_port(), free_port()
    h = haproxy(nodes, hp, hp_sticky, d)
    wait_until(lambda: subprocess.run(["curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{hp}/status"], stderr=subprocess.DEVNULL).returncode == 0, 20, 0.1)
    post = f"{d}/post.lua"
    open(post, "w").write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          'wrk.body = \'{"title": "bench write", "body": "written by wrk"}\'\n')
    workloads = [("read an issue", "/api/issues/1000", None), ("search", "/api/search?q=plankton&limit=20", None),
                 ("create an issue", "/api/issues", post)]
    targets = [("Capstan balancer", lb, lambda: [s.proc.pid]), ("HAProxy", hp, lambda: [h.pid] + children(h.pid)),
               ("one node, direct", nodes[0], lambda: [])]
    results = {}
    for _ in range(a.rounds):
        for wname, path, script in workloads:
            for tname, port, pids in targets:
                url = f"http://127.0.0.1:{port}{path}"
                before = cpu_seconds(pids())
                r = wrk(url, a.seconds, a.conns, [f"Authorization: Bearer {token}"], script)
                r["lb_cpu_us"] = (cpu_seconds(pids()) - before) / max(r["requests"], 1) * 1e6
                results.setdefault((wname, tname), []).append(r)
    h.terminate()
    h.wait()
    app_cpu = sum(cpu_seconds([p]) for p in s.pids())
    s.stop()
    for d in data_dirs + [manifests, d]:
        shutil.rmtree(d, ignore_errors=True)

    print(f"Time from `capstan up examples/ha-stack` to the whole stack Ready (PostgreSQL + 2 Teamboard nodes), "
          f"{a.rounds} runs each:")
    print()
    print("| start | median | all runs |")
    print("|---|---|---|")
    print(f"| cold: new data directory (initdb, schema, empty indexes) | {statistics.median(cold):.2f} s | "
          f"{', '.join(f'{x:.2f}' for x in cold)} |")
    print(f"| warm: the same data again ({a.issues} issues, both indexes opened) | "
          f"{statistics.median(warm):.2f} s | {', '.join(f'{x:.2f}' for x in warm)} |")
    print()
    print(f"Seeding {a.issues} issues one request at a time through the balancer: {seed_s:.1f} s "
          f"({a.issues / seed_s:.0f} writes/s, sequential).")
    print()
    print(f"Throughput, medians of {a.rounds} interleaved rounds of {a.seconds} s, wrk -t2 -c{a.conns}, "
          f"bearer token, {a.issues}+ issues:")
    print()
    print("| workload | path | req/s (median) | p50 | p99 | balancer CPU per request | vs HAProxy | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for wname, _, _ in workloads:
        hap = statistics.median(r["rps"] for r in results[(wname, "HAProxy")])
        for tname, _, _ in targets:
            rs = results[(wname, tname)]
            med = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
            cpu = f"{statistics.median(r['lb_cpu_us'] for r in rs):.0f} µs" if tname != "one node, direct" else "—"
            errors = sum(r["errors"] for r in rs)
            print(f"| {wname} | {tname} | {med['rps']:.0f} | {med['p50_ms']:.2f} ms | {med['p99_ms']:.2f} ms | {cpu} | "
                  f"{med['rps'] / hap:.2f} | {errors} |")
    print()
    print(f"(Teamboard nodes' CPU over the whole run: {app_cpu:.0f} s.)")


if __name__ == "__main__":
    main()
