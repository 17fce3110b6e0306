#!/usr/bin/env python3
"""Load balancers compared: Capstan, nginx, HAProxy. Run through bench/lb.sh."""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from common import api_call, free_port, wrk  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def wait_http(url, limit=20):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise TimeoutError(url)


class Capstan:
    def __init__(self, bindir, port, sticky_port, api=None, wrap=(), exe=None, expose=()):
        """`capstan up` with an App of two backends (`bindir`'s capstan-hello) behind two entry points, and any more
        `expose` entries; `exe` is the capstan binary (default `bindir`'s), `wrap` a command prefix (valgrind)."""
        self.data = tempfile.mkdtemp(prefix="capstan-lb-")
        self.api = api or 17600 + os.getpid() % 300
        env = dict(os.environ, CAPSTAN_DATA=self.data, CAPSTAN_LOG="warn")
        self.proc = subprocess.Popen([*wrap, exe or f"{bindir}/capstan", "up", "--listen", f"127.0.0.1:{self.api}"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + (120 if wrap else 20)
        while not os.path.exists(f"{self.data}/server.json") and time.monotonic() < end:
            time.sleep(0.05)
        self.token = open(f"{self.data}/token").read().strip()
        app = {"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": "bench"},
               "spec": {"replicas": 2, "run": {"command": [f"{bindir}/capstan-hello"]}, "ports": [{"name": "http"}],
                        "probes": {"readiness": {"http": {"path": "/status", "port": "http"}, "periodSeconds": 1}},
                        "expose": [{"port": port},
                                   {"name": "sticky", "port": sticky_port, "sticky": {"cookie": {"name": "ROUTE"}}},
                                   *expose]}}
        self.call("POST", "/api/v1/apply", {"objects": [app]})
        end = time.monotonic() + 30
        while time.monotonic() < end:
            st = self.call("GET", "/api/v1/namespaces/default/apps/bench").get("status") or {}
            if st.get("readyReplicas") == 2:
                break
            time.sleep(0.1)
        self.backends = [r["ports"]["http"] for r in st["replicaStatuses"]]
        self.pids = [r["pid"] for r in st["replicaStatuses"]]

    def call(self, method, path, body=None):
        return api_call(self.data, self.token, method, path, body)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


# Every balancer is configured to do what Capstan always does: keep-alive to the backends, retry a failed
# connection on the other backend, and send X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host.


# nginx's proxying, as every benchmark configures it: keep-alive upstream, a retry on another backend, X-Forwarded-*.
NGINX_LOCATION = """    location / {
      proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_next_upstream error timeout;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }"""


def start_nginx(conf, d, wrap=()):
    """nginx in the foreground with `conf`, written to `d`."""
    path = f"{d}/nginx.conf"
    open(path, "w").write(conf)
    return subprocess.Popen([*wrap, "nginx", "-c", path, "-p", d, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def nginx(backends, port, d, workers=2, prefix="", wrap=()):
    conf = f"""{prefix}worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream be {{ {" ".join(f"server 127.0.0.1:{b} max_fails=1 fail_timeout=10s;" for b in backends)} keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
{NGINX_LOCATION}
  }}
}}
"""
    return start_nginx(conf, d, wrap)


def haproxy(backends, port, sticky_port, d, threads=2, wrap=()):
    servers = "\n".join(f"  server s{i} 127.0.0.1:{b} check inter 2s rise 2 fall 3" for i, b in enumerate(backends))
    forwarded = "  http-request set-header X-Forwarded-Proto http\n  http-request set-header X-Forwarded-Host %[req.hdr(host)]"
    sticky = "\n".join(f"  server s{i} 127.0.0.1:{b} check inter 2s rise 2 fall 3 cookie s{i}" for i, b in enumerate(backends))
    conf = f"""global
  nbthread {threads}
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  option redispatch
  retries 3
  option forwardfor
frontend plain
  bind 127.0.0.1:{port}
{forwarded}
  default_backend be
frontend sticky
  bind 127.0.0.1:{sticky_port}
{forwarded}
  default_backend be_sticky
backend be
  balance roundrobin
{servers}
backend be_sticky
  balance roundrobin
  cookie SERVERID insert indirect nocache
{sticky}
"""
    path = f"{d}/haproxy.cfg"
    open(path, "w").write(conf)
    return subprocess.Popen([*wrap, "haproxy", "-f", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_under_load(port, path, kill, dead_port, seconds=5.0, conns=10, kill_at=1.0):
    """Keep-alive GETs from `conns` client threads for `seconds`; `kill()` runs after `kill_at`. Returns what the
    clients saw (failed requests, when the last one ended after the kill, the slowest one running in the half second
    after it) and, from
    tcpdump on loopback, how long the balancer kept sending to the dead replica: the resets its port answered."""
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-nn", "-tt", "-l", "--immediate-mode",
                             f"tcp src port {dead_port} and tcp[tcpflags] & tcp-rst != 0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # tcpdump attaches its filter
    if dump.poll() is not None:
        sys.exit(f"tcpdump cannot capture on loopback (it needs root or CAP_NET_RAW): {dump.stderr.read().strip()}")
    log = []  # (start, end, ok), times relative to the kill
    start = time.monotonic()
    t_kill = start + kill_at
    lock = threading.Lock()

    def client():
        conn = None
        while time.monotonic() - start < seconds:
            t = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok, conn = False, None
            with lock:
                log.append((t - t_kill, time.monotonic() - t_kill, ok))

    threads = [threading.Thread(target=client) for _ in range(conns)]
    for th in threads:
        th.start()
    time.sleep(max(0.0, t_kill - time.monotonic()))
    wall_kill = time.time()
    kill()
    for th in threads:
        th.join()
    time.sleep(0.2)
    dump.terminate()
    resets = [float(line.split()[0]) - wall_kill for line in dump.communicate()[0].splitlines() if line.strip()]
    resets = [r for r in resets if r >= 0]
    failed = [e for s_, e, ok in log if not ok and e >= 0]
    around = [e - s_ for s_, e, _ in log if e >= 0 and s_ <= 0.5]
    baseline = sorted(e - s_ for s_, e, _ in log if e < 0)
    return {
        "requests": len(log),
        "failed": len(failed),
        "last_failure_ms": max(failed) * 1000 if failed else 0.0,
        "slowest_after_kill_ms": max(around) * 1000 if around else 0.0,  # overlapping the half second after the kill
        "p99_before_ms": baseline[int(len(baseline) * 0.99)] * 1000 if baseline else 0.0,
        "resets": len(resets),
        "last_reset_ms": max(resets) * 1000 if resets else 0.0,
    }


def instructions_per_request(start, port, path, d, seconds):
    """User-space instructions per request of one balancer, counted by callgrind: the same on a quiet or a busy
    machine, so it shows differences too small for the noise of req/s. `start(wrap)` starts the balancer under the
    given command prefix and returns its process. The count covers the whole process, after a warm-up, over
    `seconds` of wrk -t1 -c8 (valgrind runs the process's threads one at a time, so it serves a few thousand req/s).
    Returns (requests, instructions per request)."""
    out = f"{d}/callgrind-{port}.out"
    proc = start(("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"))
    try:
        url = f"http://127.0.0.1:{port}{path}"
        wait_http(url, 120)
        wrk(url, 5, 4)  # warm-up: connections, pools, caches
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
        r = wrk(url, seconds, 8, threads=1)
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
        dumps = sorted((f for f in os.listdir(d) if f.startswith(f"callgrind-{port}.out.")), key=lambda f: int(f.rsplit(".", 1)[1]))
        with open(f"{d}/{dumps[-1]}") as f:
            total = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
        return r["requests"], total / max(r["requests"], 1)
    finally:
        proc.send_signal(signal.SIGINT)  # a clean stop for all three (Capstan stops its backends)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:  # a slow stop under valgrind must not cost the run's results
            proc.kill()
            proc.wait()


def measure(name, url, pids, seconds, conns, headers=()):
    wrk(url, 2, conns, headers)  # warm-up: connections, pools, caches
    before = cpu_seconds(pids())
    r = wrk(url, seconds, conns, headers)
    r["cpu_us_per_req"] = (cpu_seconds(pids()) - before) / max(r["requests"], 1) * 1e6
    r["name"] = name
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--instr-seconds", type=int, default=20, help="wrk time under callgrind per balancer; 0 skips")
    ap.add_argument("--pgo-bin", help="a PGO release build of capstan (scripts/build-release.sh), measured as well")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lb-bench-")
    ports = {"capstan": 18101, "capstan_sticky": 18102, "nginx": 18103, "haproxy": 18104, "haproxy_sticky": 18105}
    c = Capstan(a.bin, ports["capstan"], ports["capstan_sticky"])
    pgo = None
    if a.pgo_bin:
        ports.update(pgo=18106, pgo_sticky=18107)
        pgo = Capstan(a.bin, ports["pgo"], ports["pgo_sticky"], api=free_port(), exe=a.pgo_bin)
    n = nginx(c.backends, ports["nginx"], d)
    h = haproxy(c.backends, ports["haproxy"], ports["haproxy_sticky"], d)
    try:
        run(a, c, n, h, ports, pgo)
    finally:
        for p in (n, h):
            if p.poll() is None:
                p.send_signal(signal.SIGQUIT if p is n else signal.SIGTERM)
                p.wait(timeout=30)
        c.stop()
        subprocess.run(["rm", "-rf", c.data, d])
        if pgo:
            pgo.stop()
            subprocess.run(["rm", "-rf", pgo.data])


def run(a, c, n, h, ports, pgo=None):
    path = "/bytes/1024"
    for p in ports.values():
        wait_http(f"http://127.0.0.1:{p}{path}")
    # Sticky: every wrk connection carries a cookie pinning it to a backend, as a signed-in browser does.
    cookie = urllib.request.urlopen(f"http://127.0.0.1:{ports['capstan_sticky']}/").headers["Set-Cookie"].split(";")[0]
    runs = [
        ("Capstan", f"http://127.0.0.1:{ports['capstan']}{path}", lambda: [c.proc.pid], ()),
        ("nginx", f"http://127.0.0.1:{ports['nginx']}{path}", lambda: [n.pid] + children(n.pid), ()),
        ("HAProxy", f"http://127.0.0.1:{ports['haproxy']}{path}", lambda: [h.pid] + children(h.pid), ()),
        ("Capstan, sticky cookie", f"http://127.0.0.1:{ports['capstan_sticky']}{path}", lambda: [c.proc.pid], [f"Cookie: {cookie}"]),
        ("HAProxy, sticky cookie", f"http://127.0.0.1:{ports['haproxy_sticky']}{path}", lambda: [h.pid] + children(h.pid), ["Cookie: SERVERID=s0"]),
    ]
    if pgo:
        # The release build (scripts/build-release.sh): the same code, optimised with a profile of its training run.
        pcookie = urllib.request.urlopen(f"http://127.0.0.1:{ports['pgo_sticky']}/").headers["Set-Cookie"].split(";")[0]
        runs[1:1] = [("Capstan, PGO release build", f"http://127.0.0.1:{ports['pgo']}{path}", lambda: [pgo.proc.pid], ())]
        runs[5:5] = [("Capstan, PGO release build, sticky cookie", f"http://127.0.0.1:{ports['pgo_sticky']}{path}",
                      lambda: [pgo.proc.pid], [f"Cookie: {pcookie}"])]
    # Interleaved rounds: every balancer sees the same machine conditions; the median of each is reported.
    samples = {name: [] for name, *_ in runs}
    for _ in range(a.rounds):
        for name, url, pids, headers in runs:
            samples[name].append(measure(name, url, pids, a.seconds, a.conns, headers))
    results = []
    for name, rs in samples.items():
        rs.sort(key=lambda r: r["rps"])
        mid = rs[len(rs) // 2]
        mid["all_rps"] = [round(r["rps"]) for r in rs]
        results.append(mid)

    # SIGKILL of one backend under load: what clients of each balancer see in the next 5 seconds.
    kill = {}
    for name, port in [("Capstan", ports["capstan"]), ("nginx", ports["nginx"]), ("HAProxy", ports["haproxy"])]:
        st = c.call("GET", "/api/v1/namespaces/default/apps/bench")["status"]
        pid = st["replicaStatuses"][1]["pid"]
        dead_port = st["replicaStatuses"][1]["ports"]["http"]
        t0 = time.monotonic()
        kill[name] = kill_under_load(port, path, lambda pid=pid: os.kill(pid, signal.SIGKILL), dead_port)
        # Capstan restarts the backend; wait until both are Ready again before the next balancer's turn.
        while time.monotonic() - t0 < 30:
            st = c.call("GET", "/api/v1/namespaces/default/apps/bench")["status"]
            if st.get("readyReplicas") == 2 and st["replicaStatuses"][1]["pid"] != pid:
                break
            time.sleep(0.1)
        kill[name]["port_reused"] = st["replicaStatuses"][1]["ports"]["http"] == dead_port
        time.sleep(2.5)  # HAProxy's checks need `rise 2` at `inter 2s` to take the backend back

    # Instructions per request under callgrind: one more instance of each balancer, one worker where there is a
    # choice (valgrind runs one thread at a time anyway), in front of the same backends; and a bare hyper proxy.
    instr = {}
    if a.instr_seconds > 0:
        d = tempfile.mkdtemp(prefix="lb-callgrind-")
        port, sticky, api = free_port(), free_port(), free_port()
        builds = [("Capstan", None)] + ([("Capstan, PGO release build", a.pgo_bin)] if a.pgo_bin else [])
        for label, exe in builds:
            holder = {}

            def start_capstan(wrap, exe=exe, holder=holder):
                holder["c"] = Capstan(a.bin, port, sticky, api=api, wrap=wrap, exe=exe)
                return holder["c"].proc
            try:
                instr[label] = instructions_per_request(start_capstan, port, path, d, a.instr_seconds)
            finally:
                if "c" in holder:
                    subprocess.run(["rm", "-rf", holder["c"].data])
        np_, hp = free_port(), free_port()
        instr["nginx"] = instructions_per_request(
            lambda wrap: nginx(c.backends, np_, d, workers=1, prefix="master_process off;\n", wrap=wrap), np_, path, d, a.instr_seconds)
        instr["HAProxy"] = instructions_per_request(
            lambda wrap: haproxy(c.backends, hp, free_port(), d, threads=1, wrap=wrap), hp, path, d, a.instr_seconds)
        # The floor under any balancer on hyper: its server and client connections passing requests through.
        fp = free_port()
        floor = [f"{a.bin}/examples/hyper_floor", str(fp)] + [str(b) for b in c.backends]
        instr["hyper alone (examples/hyper_floor)"] = instructions_per_request(
            lambda wrap: subprocess.Popen([*wrap, *floor], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            fp, path, d, a.instr_seconds)
        subprocess.run(["rm", "-rf", d])

    base = {r["name"]: r for r in results}
    print(f"Medians of {a.rounds} interleaved rounds of {a.seconds} s, wrk -t2 -c{a.conns}, 1 KiB responses.")
    print()
    print("| balancer | req/s (median) | all rounds | p50 | p99 | CPU per request | req/s vs nginx | req/s vs HAProxy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ref = "HAProxy, sticky cookie" if "sticky" in r["name"] else "HAProxy"
        vs_n = f"{r['rps'] / base['nginx']['rps']:.2f}" if "sticky" not in r["name"] else ""
        print(f"| {r['name']} | {r['rps']:.0f} | {', '.join(str(x) for x in r['all_rps'])} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['cpu_us_per_req']:.1f} µs | {vs_n} | {r['rps'] / base[ref]['rps']:.2f} |")
    print()
    print("One of two backends SIGKILLed 1 s into 5 s of keep-alive GETs from 10 client connections:")
    print()
    print("| balancer | requests | failed | last failure after the kill | slowest request running between the kill and 0.5 s after it (p99 before) | sent to the dead replica: resets, last one after the kill |")
    print("|---|---|---|---|---|---|")
    for k, v in kill.items():
        print(f"| {k} | {v['requests']} | {v['failed']} | {v['last_failure_ms']:.0f} ms | {v['slowest_after_kill_ms']:.1f} ms ({v['p99_before_ms']:.1f} ms) | {v['resets']}, {v['last_reset_ms']:.0f} ms |")
    print()
    print("The replacement listens on " + ("the same port" if all(v["port_reused"] for v in kill.values()) else "a new port") + ".")
    if instr:
        print()
        print(f"User-space instructions per request (callgrind, whole process, {a.instr_seconds} s of wrk -t1 -c8 after a warm-up):")
        print()
        print("| balancer | requests counted | instructions per request | vs nginx | vs HAProxy |")
        print("|---|---|---|---|---|")
        for k, (reqs, ipr) in instr.items():
            print(f"| {k} | {reqs} | {ipr:,.0f} | {ipr / instr['nginx'][1]:.2f} | {ipr / instr['HAProxy'][1]:.2f} |")
    json.dump({"results": results, "sigkill": kill, "instructions_per_request": {k: v[1] for k, v in instr.items()}}, open(os.environ.get("BENCH_OUT", "/tmp/capstan-bench-lb.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
