#!/usr/bin/env python3
"""Capstan vs supervisord: memory, restart latency and bulk apply. Run through bench/supervisor.sh."""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SUPERVISORD = "/usr/bin/supervisord"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Capstan, free_port, gone, http_ok, rss_kib, sample_rss, wait_until  # noqa: E402


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
    print("| measure | Capstan | supervisord | ratio (Capstan / supervisord) |")
    print("|---|---|---|---|")
    print(f"| control-plane RSS, idle | {res['capstan_idle_kib'] / 1024:.1f} MiB | {res['supervisord_idle_kib'] / 1024:.1f} MiB | {res['capstan_idle_kib'] / res['supervisord_idle_kib']:.2f} |")
    print(f"| control-plane RSS, {a.apps} Apps x 2 = {procs} processes | {res['capstan_loaded_kib'] / 1024:.1f} MiB | {res['supervisord_loaded_kib'] / 1024:.1f} MiB | {res['capstan_loaded_kib'] / res['supervisord_loaded_kib']:.2f} |")
    print(f"| SIGKILL → replacement answers HTTP | {ms(res['capstan_serve_s'])} | {ms(res['supervisord_serve_s'])} | {statistics.median(res['capstan_serve_s']) / statistics.median(res['supervisord_serve_s']):.2f} |")
    print(f"| SIGKILL → replacement Ready (readiness period 1 s) | {ms(res['capstan_ready_s'])} | n/a (no readiness) | goal: ≤ supervisord + 1000 ms |")
    print(f"| apply {a.bulk} Apps → all Ready | {res['bulk_ready_s']:.2f} s (RSS {res['bulk_peak_kib'] / 1024:.1f} MiB) | n/a | |")
    json.dump(res, open(os.environ.get("BENCH_OUT", "/tmp/capstan-bench-supervisor.json"), "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
