#!/usr/bin/env python3
"""Capstan vs supervisord: memory, restart latency and bulk apply. Run through bench/supervisor.sh."""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

SUPERVISORD = "/usr/bin/supervisord"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def gone(pid):
    """True once the process no longer runs (absent or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http_ok(port, path="/status", timeout=0.5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def wait_until(pred, limit, step=0.005):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError("condition not met in time")


def sample_rss(pid, seconds=6.0):
    vals = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        vals.append(rss_kib(pid))
        time.sleep(0.5)
    return max(vals)


class Capstan:
    def __init__(self, bindir):
        self.bindir = bindir
        self.data = tempfile.mkdtemp(prefix="capstan-bench-")
        self.port = free_port()
        env = dict(os.environ, CAPSTAN_DATA=self.data, CAPSTAN_LOG="warn")
        self.proc = subprocess.Popen(
            [f"{bindir}/capstan", "up", "--listen", f"127.0.0.1:{self.port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: os.path.exists(f"{self.data}/server.json"), 20, 0.02)
        self.token = open(f"{self.data}/token").read().strip()

    def api(self, method, path, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def app(self, name, replicas, period=2, extra=None):
        spec = {"replicas": replicas,
                "run": {"command": [f"{self.bindir}/capstan-hello"]},
                "ports": [{"name": "http"}],
                "probes": {"readiness": {"http": {"path": "/status", "port": "http"}, "periodSeconds": period}},
                "terminationGracePeriodSeconds": 5}
        spec.update(extra or {})
        return {"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": name}, "spec": spec}

    def apply(self, objs):
        return self.api("POST", "/api/v1/apply", {"objects": objs})

    def all_ready(self, n):
        items = self.api("GET", "/api/v1/apps")["items"]
        ready = sum(1 for o in items if any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in (o.get("status") or {}).get("conditions", [])))
        return ready == n

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


class Supervisord:
    def __init__(self, bindir, programs):
        self.dir = tempfile.mkdtemp(prefix="supervisord-bench-")
        self.sock = f"{self.dir}/s.sock"
        conf = [f"[unix_http_server]\nfile={self.sock}\n",
                "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
                f"[supervisorctl]\nserverurl=unix://{self.sock}\n",
                f"[supervisord]\nnodaemon=true\nlogfile={self.dir}/supervisord.log\npidfile={self.dir}/s.pid\nchildlogdir={self.dir}\n"]
        self.ports = {}
        for name in programs:
            port = free_port()
            self.ports[name] = port
            conf.append(f"[program:{name}]\ncommand={bindir}/capstan-hello\nenvironment=PORT=\"{port}\",CAPSTAN_REPLICA=\"{name}\"\n"
                        "autorestart=true\nstartsecs=0\nstopwaitsecs=5\n")
        self.conf = f"{self.dir}/supervisord.conf"
        open(self.conf, "w").write("\n".join(conf))
        self.proc = subprocess.Popen([SUPERVISORD, "-c", self.conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: os.path.exists(self.sock), 20, 0.02)

    def pid_of(self, name):
        out = subprocess.run(["supervisorctl", "-c", self.conf, "pid", name], capture_output=True, text=True).stdout.strip()
        return int(out) if out.isdigit() and out != "0" else None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def restart_latency_capstan(c, rounds):
    c.apply([c.app("victim", 1, period=1, extra={"restartBackoff": {"resetAfterSeconds": 1}})])
    wait_until(lambda: c.all_ready(1), 30, 0.05)
    serve, ready = [], []
    for _ in range(rounds):
        st = c.api("GET", "/api/v1/namespaces/default/apps/victim")["status"]["replicaStatuses"][0]
        pid, port = st["pid"], st["ports"]["http"]
        time.sleep(1.2)  # past resetAfterSeconds: each kill is a first crash, restarted at once as supervisord does
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: gone(pid), 5, 0.0005)
        wait_until(lambda: http_ok(port, timeout=0.2), 30, 0.002)
        serve.append(time.monotonic() - t0)

        def is_ready():
            s = c.api("GET", "/api/v1/namespaces/default/apps/victim")["status"]["replicaStatuses"][0]
            return s.get("pid") not in (None, pid) and s["ready"]
        wait_until(is_ready, 30, 0.002)
        ready.append(time.monotonic() - t0)
    return serve, ready


def restart_latency_supervisord(bindir, rounds):
    s = Supervisord(bindir, ["victim"])
    port = s.ports["victim"]
    wait_until(lambda: http_ok(port), 30, 0.02)
    serve = []
    for _ in range(rounds):
        pid = s.pid_of("victim")
        time.sleep(1.2)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: gone(pid), 5, 0.0005)
        wait_until(lambda: http_ok(port, timeout=0.2), 30, 0.002)
        serve.append(time.monotonic() - t0)
        assert s.pid_of("victim") not in (None, pid), "supervisord replaced the process"

    s.stop()
    return serve


def ms(xs):
    return f"{statistics.median(xs) * 1000:.0f} ms (p50), {max(xs) * 1000:.0f} ms (max)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--apps", type=int, default=50)
    ap.add_argument("--bulk", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    res = {}

    # 1. Memory, idle and with apps x 2 replicas.
    c = Capstan(a.bin)
    res["capstan_idle_kib"] = sample_rss(c.proc.pid, 3)
    c.apply([c.app(f"app{i:03d}", 2) for i in range(a.apps)])
    wait_until(lambda: c.all_ready(a.apps), 120, 0.2)
    res["capstan_loaded_kib"] = sample_rss(c.proc.pid)
    c.stop()

    s = Supervisord(a.bin, [])
    res["supervisord_idle_kib"] = sample_rss(s.proc.pid, 3)
    s.stop()
    names = [f"app{i:03d}-{r}" for i in range(a.apps) for r in range(2)]
    s = Supervisord(a.bin, names)
    wait_until(lambda: all(http_ok(p, timeout=0.2) for p in s.ports.values()), 120, 0.2)
    res["supervisord_loaded_kib"] = sample_rss(s.proc.pid)
    s.stop()

    # 2. SIGKILL to replacement.
    c = Capstan(a.bin)
    res["capstan_serve_s"], res["capstan_ready_s"] = restart_latency_capstan(c, a.rounds)
    c.stop()
    res["supervisord_serve_s"] = restart_latency_supervisord(a.bin, a.rounds)

    # 3. Bulk apply: time until every App is Ready.
    c = Capstan(a.bin)
    objs = [c.app(f"bulk{i:03d}", 1, period=1) for i in range(a.bulk)]
    t0 = time.monotonic()
    c.apply(objs)
    wait_until(lambda: c.all_ready(a.bulk), 300, 0.05)
    res["bulk_ready_s"] = time.monotonic() - t0
    res["bulk_peak_kib"] = rss_kib(c.proc.pid)
    c.stop()

    procs = 2 * a.apps
    print(f"| measure | Capstan | supervisord | ratio (Capstan / supervisord) |")
    print(f"|---|---|---|---|")
    print(f"| control-plane RSS, idle | {res['capstan_idle_kib'] / 1024:.1f} MiB | {res['supervisord_idle_kib'] / 1024:.1f} MiB | {res['capstan_idle_kib'] / res['supervisord_idle_kib']:.2f} |")
    print(f"| control-plane RSS, {a.apps} Apps x 2 = {procs} processes | {res['capstan_loaded_kib'] / 1024:.1f} MiB | {res['supervisord_loaded_kib'] / 1024:.1f} MiB | {res['capstan_loaded_kib'] / res['supervisord_loaded_kib']:.2f} |")
    print(f"| SIGKILL → replacement answers HTTP | {ms(res['capstan_serve_s'])} | {ms(res['supervisord_serve_s'])} | {statistics.median(res['capstan_serve_s']) / statistics.median(res['supervisord_serve_s']):.2f} |")
    print(f"| SIGKILL → replacement Ready (readiness period 1 s) | {ms(res['capstan_ready_s'])} | n/a (no readiness) | goal: ≤ supervisord + 1000 ms |")
    print(f"| apply {a.bulk} Apps → all Ready | {res['bulk_ready_s']:.2f} s (RSS {res['bulk_peak_kib'] / 1024:.1f} MiB) | n/a | |")
    json.dump(res, open(os.environ.get("BENCH_OUT", "/tmp/capstan-bench-supervisor.json"), "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
