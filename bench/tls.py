#!/usr/bin/env python3
"""The front door over TLS compared: Capstan's Gateway HTTPS listener, nginx and HAProxy, with the same ECDSA P-256
certificate and TLS 1.3, in front of the same two backends. Run through bench/tls.sh."""

import argparse
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import api_call, free_port, rss_kib, wrk  # noqa: E402
from lb import NGINX_LOCATION, children, cpu_seconds, start_nginx, wait_http  # noqa: E402

PATH = "/bytes/1024"
# Every proxy keeps an idle client connection this long, so that the idle-memory measurement is not cut short.
IDLE_SECONDS = 120


def certificate(d):
    """An ECDSA P-256 certificate for 127.0.0.1 and localhost, self-signed: (cert file, key file)."""
    crt, key = f"{d}/tls.crt", f"{d}/tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "30", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", crt], check=True, capture_output=True)
    open(f"{d}/both.pem", "w").write(open(crt).read() + open(key).read())  # HAProxy wants them in one file
    return crt, key


class Capstan:
    """`capstan up` with an App of two backends, a Gateway with an HTTPS listener (and an HTTP one carrying
    `routes` HTTPRoutes, the last of which the benchmark requests), and the App's own `expose` entry point."""

    def __init__(self, bindir, exe, crt, key, https, http, expose, routes, wrap=()):
        self.data = tempfile.mkdtemp(prefix="capstan-tls-")
        api = free_port()
        env = dict(os.environ, CAPSTAN_DATA=self.data, CAPSTAN_LOG="warn")
        self.proc = subprocess.Popen([*wrap, exe, "up", "--listen", f"127.0.0.1:{api}", "--header-timeout", str(IDLE_SECONDS)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + (120 if wrap else 20)
        while not os.path.exists(f"{self.data}/server.json") and time.monotonic() < end:
            time.sleep(0.05)
        self.token = open(f"{self.data}/token").read().strip()
        app = {"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": "bench"},
               "spec": {"replicas": 2, "run": {"command": [f"{bindir}/capstan-hello"]}, "ports": [{"name": "http"}],
                        "probes": {"readiness": {"http": {"path": "/status", "port": "http"}, "periodSeconds": 1}},
                        "expose": [{"port": expose}]}}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bench-tls"},
                  "type": "kubernetes.io/tls", "stringData": {"tls.crt": open(crt).read(), "tls.key": open(key).read()}}
        gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "bench"},
              "spec": {"gatewayClassName": "capstan", "addresses": [{"value": "127.0.0.1"}], "listeners": [
                  {"name": "https", "port": https, "protocol": "HTTPS",
                   "tls": {"certificateRefs": [{"name": "bench-tls"}]}},
                  {"name": "http", "port": http, "protocol": "HTTP"}]}}
        route = lambda name, section, host: {  # noqa: E731
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": "bench", "sectionName": section}], **({"hostnames": [host]} if host else {}),
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/bytes"}}],
                                "backendRefs": [{"name": "bench", "port": 8080}]}]}}
        many = [route(f"r{i}", "http", f"r{i}.bench.test") for i in range(routes)]
        self.call("POST", "/api/v1/apply", {"objects": [app, secret, gw, route("tls", "https", None), *many]})
        end = time.monotonic() + (180 if wrap else 30)
        while time.monotonic() < end:
            st = self.call("GET", "/api/v1/namespaces/default/apps/bench").get("status") or {}
            if st.get("readyReplicas") == 2:
                break
            time.sleep(0.1)
        self.backends = [r["ports"]["http"] for r in st["replicaStatuses"]]

    def call(self, method, path, body=None):
        return api_call(self.data, self.token, method, path, body)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=180)  # under valgrind, a clean stop takes a while


def nginx(backends, port, d, crt, key):
    conf = f"""worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log;
worker_rlimit_nofile 20000;
events {{ worker_connections 15000; }}
http {{
  access_log off;
  client_header_timeout {IDLE_SECONDS}s;
  keepalive_timeout {IDLE_SECONDS}s;
  keepalive_requests 1000000;
  upstream be {{ {" ".join(f"server 127.0.0.1:{b} max_fails=1 fail_timeout=10s;" for b in backends)} keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
{NGINX_LOCATION}
  }}
}}
"""
    return start_nginx(conf, d)


def haproxy(backends, port, d):
    servers = "\n".join(f"  server s{i} 127.0.0.1:{b} check inter 2s rise 2 fall 3" for i, b in enumerate(backends))
    conf = f"""global
  nbthread 2
  maxconn 9900
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client {IDLE_SECONDS}s
  timeout http-keep-alive {IDLE_SECONDS}s
  timeout http-request {IDLE_SECONDS}s
  timeout server 60s
  option http-keep-alive
  option redispatch
  retries 3
  option forwardfor
frontend tls
  bind 127.0.0.1:{port} ssl crt {d}/both.pem alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend be
backend be
  balance roundrobin
{servers}
"""
    path = f"{d}/haproxy.cfg"
    open(path, "w").write(conf)
    return subprocess.Popen(["haproxy", "-f", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def h2load(url, seconds, clients, streams):
    """h2load over HTTP/2 (TLS, ALPN h2): req/s and failed requests."""
    out = subprocess.run(["h2load", "-D", str(seconds), "-c", str(clients), "-m", str(streams), "-t", "2", url],
                         capture_output=True, text=True).stdout
    done = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed", out)
    if not done or not m:
        sys.exit(f"h2load gave no report for {url}:\n{out}")
    proto = re.search(r"Application protocol: (\S+)", out)
    # "errored" requests are counted among the "failed" ones.
    return {"rps": float(done.group(1)), "done": int(m.group(1)), "failed": int(m.group(2)),
            "protocol": proto.group(1) if proto else "?"}


def full_handshakes(port, seconds, clients=2):
    """New TLS 1.3 connections per second with a full handshake each (no session resumption), one GET each:
    `clients` `openssl s_time -new` running at once."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-tls1_3", "-time", str(seconds),
           "-www", PATH]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(clients)]
    total = 0
    for p in procs:
        out = p.communicate()[0]
        m = re.search(r"(\d+) connections in \d+ real seconds", out)
        if not m:
            sys.exit(f"openssl s_time gave no report for port {port}:\n{out}")
        total += int(m.group(1))
    return {"rps": total / seconds}


def idle_tls_memory(port, pids, count):
    """RSS growth (KiB, summed over `pids()`) with `count` TLS connections open and idle (handshake done, no request),
    and how many the proxy still held at the end (a proxy that closed some would look cheaper)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    before = sum(rss_kib(p) for p in pids())
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(ctx.wrap_socket(s, server_hostname="localhost"))
    time.sleep(2)
    after = sum(rss_kib(p) for p in pids())
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += 0 if s.recv(1) == b"" else 1
        except (ssl.SSLWantReadError, BlockingIOError):
            alive += 1
        except OSError:
            pass
    for s in socks:
        s.close()
    time.sleep(1)
    return {"kib": after - before, "held": alive}


def median(samples, key):
    vals = sorted(samples, key=lambda r: r[key])
    mid = dict(vals[len(vals) // 2])
    mid["all"] = [round(r[key]) for r in vals]
    return mid


def measure(url, pids, seconds, conns, headers=()):
    wrk(url, 2, conns, headers)  # warm-up
    before = cpu_seconds(pids())
    r = wrk(url, seconds, conns, headers)
    r["cpu_us_per_req"] = (cpu_seconds(pids()) - before) / max(r["requests"], 1) * 1e6
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--pgo-bin", help="a PGO release build of capstan (scripts/build-release.sh), measured as well")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    # 10,000 where the descriptor limit allows: HAProxy reserves two per connection, so a hard limit of 20,000 (this
    # machine's, which a container cannot raise) caps it below 10,000.
    ap.add_argument("--idle", type=int, default=8000, help="idle TLS connections for the memory measurement")
    ap.add_argument("--routes", type=int, default=100)
    ap.add_argument("--instr-seconds", type=int, default=0,
                    help="with `--only routing`: also count user-space instructions per request under callgrind, "
                         "expose against the gateway, over this many seconds of wrk each")
    ap.add_argument("--only", choices=["all", "idle", "routing", "h2"], default="all",
                    help="one measure alone, for a quick look after a change to it: `idle` the idle-connection "
                         "memory, `routing` the 100 routes against `expose`, `h2` HTTP/2 against the peers")
    a = ap.parse_args()
    if a.instr_seconds and a.only != "routing":
        ap.error("--instr-seconds counts the routing path: use it with --only routing")
    # 10,000 idle connections need more descriptors than a shell's usual limit, in the client and in each proxy
    # (HAProxy asks for twice its maxconn): raised here (root may raise the hard limit), and inherited below.
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d = tempfile.mkdtemp(prefix="tls-bench-")
    crt, key = certificate(d)
    builds = [("Capstan", f"{a.bin}/capstan")] + ([("Capstan, PGO release build", a.pgo_bin)] if a.pgo_bin else [])
    capstans = []
    try:
        for label, exe in builds:
            ports = {"https": free_port(), "http": free_port(), "expose": free_port()}
            capstans.append((label, Capstan(a.bin, exe, crt, key, ports["https"], ports["http"], ports["expose"],
                                            a.routes), ports))
        backends = capstans[0][1].backends
        n_port, h_port = free_port(), free_port()
        n = nginx(backends, n_port, d, crt, key)
        h = haproxy(backends, h_port, d)
        try:
            run(a, capstans, n, n_port, h, h_port)
        finally:
            for p in (n, h):
                if p.poll() is None:
                    p.send_signal(signal.SIGQUIT if p is n else signal.SIGTERM)
                    p.wait(timeout=30)
    finally:
        for _, c, _ in capstans:
            c.stop()
            subprocess.run(["rm", "-rf", c.data])
        subprocess.run(["rm", "-rf", d])


def run(a, capstans, n, n_port, h, h_port):
    proxies = [(label, ports["https"], (lambda c=c: [c.proc.pid])) for label, c, ports in capstans]
    proxies += [("nginx", n_port, lambda: [n.pid] + children(n.pid)), ("HAProxy", h_port, lambda: [h.pid] + children(h.pid))]
    for _, port, _ in proxies:
        wait_tls(port)
    for label, c, ports in capstans:
        wait_http(f"http://127.0.0.1:{ports['expose']}{PATH}")
    if a.only == "idle":
        memory = {label: idle_tls_memory(port, pids, a.idle) for label, port, pids in proxies}
        return report_memory(a, proxies, memory)
    tables = {"keep-alive": {}, "new connections": {}, "full handshakes": {}, "HTTP/2": {}}
    if a.only == "routing":
        report_routing(a, capstans, routing_rounds(a, capstans))
        if a.instr_seconds:
            routing_instructions(a)
        return
    if a.only == "h2":
        for _ in range(a.rounds):
            for label, port, pids in proxies:
                h2load(f"https://127.0.0.1:{port}{PATH}", 2, a.conns, 10)  # warm-up
                before = cpu_seconds(pids())
                r = h2load(f"https://127.0.0.1:{port}{PATH}", a.seconds, a.conns, 10)
                r["cpu_us_per_req"] = (cpu_seconds(pids()) - before) / max(r["done"], 1) * 1e6
                tables["HTTP/2"].setdefault(label, []).append(r)
        for label, _, _ in proxies:
            r = median(tables["HTTP/2"][label], "rps")
            print(f"{label}: {r['rps']:.0f} req/s (rounds {r['all']}), {r['cpu_us_per_req']:.1f} us CPU per request, "
                  f"{r['protocol']}, failed {r['failed']}")
        return
    # Interleaved rounds: every proxy sees the same machine conditions; the median of each is reported.
    for _ in range(a.rounds):
        for label, port, pids in proxies:
            url = f"https://127.0.0.1:{port}{PATH}"
            tables["keep-alive"].setdefault(label, []).append(measure(url, pids, a.seconds, a.conns))
            tables["new connections"].setdefault(label, []).append(
                measure(url, pids, a.seconds, a.conns, headers=["Connection: close"]))
            tables["full handshakes"].setdefault(label, []).append(full_handshakes(port, a.seconds))
            tables["HTTP/2"].setdefault(label, []).append(h2load(url, a.seconds, a.conns, 10))
    memory = {label: idle_tls_memory(port, pids, a.idle) for label, port, pids in proxies}
    report(a, proxies, tables, memory, routing_rounds(a, capstans), capstans)


def routing_rounds(a, capstans):
    """Plain HTTP through the Gateway's HTTP listener, its last of `routes` routes matched by host name, against the
    App's own entry point (`expose`), same process, interleaved."""
    routing = {}
    for _ in range(a.rounds):
        for label, c, ports in capstans:
            pid = lambda c=c: [c.proc.pid]  # noqa: E731
            host = f"Host: r{a.routes - 1}.bench.test"
            routing.setdefault((label, "expose"), []).append(
                measure(f"http://127.0.0.1:{ports['expose']}{PATH}", pid, a.seconds, a.conns))
            routing.setdefault((label, "gateway"), []).append(
                measure(f"http://127.0.0.1:{ports['http']}{PATH}", pid, a.seconds, a.conns, headers=[host]))
    return routing


def wait_tls(port, limit=30):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s, \
                    ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(f"GET {PATH} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
                if t.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"no HTTPS on {port}")


def report(a, proxies, tables, memory, routing, capstans):
    print(f"\nTLS 1.3, ECDSA P-256, {a.conns} connections, {a.seconds} s per run, median of {a.rounds} interleaved rounds\n")
    for title, key, unit in [("keep-alive", "rps", "req/s"),
                             ("new connections", "rps", "new TLS connections/s, wrk, sessions resumed"),
                             ("full handshakes", "rps", "new TLS connections/s, openssl s_time -new, 2 clients"),
                             ("HTTP/2", "rps", "req/s, h2load -c50 -m10")]:
        rows = {label: median(rs, key) for label, rs in tables[title].items()}
        base_n, base_h = rows["nginx"][key], rows["HAProxy"][key]
        extra = {"HTTP/2": "| protocol ", "full handshakes": ""}.get(title, "| p99 ")
        dashes = "|---" * (6 if title == "full handshakes" else 7) + "|"
        print(f"\n**{title}** ({unit})\n\n| proxy | {unit.split(',')[0]} | all rounds {extra}| failed | vs nginx | vs HAProxy |")
        print(dashes)
        for label, _, _ in proxies:
            r = rows[label]
            # Failures in any round, not only the median one.
            failed = sum(x.get("errors", x.get("failed", 0)) for x in tables[title][label])
            col = {"HTTP/2": f"| {r.get('protocol')} ", "full handshakes": ""}.get(title, f"| {r.get('p99_ms', 0):.2f} ms ")
            print(f"| {label} | {r[key]:,.0f} | {r['all']} {col}| {failed} | {r[key] / base_n:.2f} | {r[key] / base_h:.2f} |")
    report_memory(a, proxies, memory)
    report_routing(a, capstans, routing)


def report_routing(a, capstans, routing):
    print(f"\n**Routing cost**: plain HTTP, {a.routes} HTTPRoutes on one Gateway listener (the last one's host name "
          "requested) against the App's own `expose` entry point\n")
    print("| build | expose req/s | gateway req/s | gateway / expose | CPU per request, expose → gateway |")
    print("|---|---|---|---|---|")
    for label, _, _ in capstans:
        e, g = median(routing[(label, "expose")], "rps"), median(routing[(label, "gateway")], "rps")
        print(f"| {label} | {e['rps']:,.0f} {e['all']} | {g['rps']:,.0f} {g['all']} | {g['rps'] / e['rps']:.3f} | "
              f"{e['cpu_us_per_req']:.1f} → {g['cpu_us_per_req']:.1f} µs |")


def routing_instructions(a):
    """User-space instructions per request (callgrind, whole process) through the App's `expose` entry point and
    through the Gateway's 100 routes, one Capstan under valgrind: the same on a quiet or a busy machine, so it shows
    differences smaller than the noise of req/s."""
    d = tempfile.mkdtemp(prefix="tls-callgrind-")
    out = f"{d}/callgrind.out"
    crt, key = certificate(d)
    ports = {"https": free_port(), "http": free_port(), "expose": free_port()}
    c = None
    counts = {}

    def dump():
        subprocess.run(["callgrind_control", "--dump", str(c.proc.pid)], check=True, capture_output=True)
        dumps = sorted((f for f in os.listdir(d) if f.startswith("callgrind.out.")), key=lambda f: int(f.rsplit(".", 1)[1]))
        with open(f"{d}/{dumps[-1]}") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
    try:
        c = Capstan(a.bin, f"{a.bin}/capstan", crt, key, ports["https"], ports["http"], ports["expose"], a.routes,
                    wrap=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"))
        # What Capstan does without requests (its controllers, probes, scrapes) in the same time, taken off each
        # count: otherwise the path that serves fewer requests in the time would carry more of it per request.
        wait_http(f"http://127.0.0.1:{ports['expose']}{PATH}", 120)
        time.sleep(5)  # the start's own work done
        subprocess.run(["callgrind_control", "--zero", str(c.proc.pid)], check=True, capture_output=True)
        time.sleep(a.instr_seconds)
        idle = dump()
        for name, port, headers in [("expose", ports["expose"], []),
                                    ("gateway", ports["http"], [f"Host: r{a.routes - 1}.bench.test"])]:
            url = f"http://127.0.0.1:{port}{PATH}"
            wrk(url, 5, 4, headers)  # warm-up
            subprocess.run(["callgrind_control", "--zero", str(c.proc.pid)], check=True, capture_output=True)
            r = wrk(url, a.instr_seconds, 8, headers, threads=1)
            total = dump()
            counts[name] = (r["requests"], (total - idle) / max(r["requests"], 1))
    finally:
        if c is not None:
            c.stop()
            subprocess.run(["rm", "-rf", c.data])
        subprocess.run(["rm", "-rf", d])
    print(f"\nUser-space instructions per request (callgrind, whole process, {a.instr_seconds} s of wrk -t1 -c8, less "
          f"{idle / a.instr_seconds:,.0f} per second counted idle):\n")
    print("| path | requests counted | instructions per request |")
    print("|---|---|---|")
    for name, (n, per) in counts.items():
        print(f"| {name} | {n:,} | {per:,.0f} |")
    print(f"\ngateway / expose: {counts['gateway'][1] / counts['expose'][1]:.3f}")


def report_memory(a, proxies, memory):
    print(f"\n**{a.idle:,} idle TLS connections** (handshake done, no request)\n")
    print("| proxy | memory added | per connection | still held | vs nginx | vs HAProxy |")
    print("|---|---|---|---|---|---|")
    for label, _, _ in proxies:
        m = memory[label]
        print(f"| {label} | {m['kib'] / 1024:.1f} MiB | {m['kib'] * 1024 / max(a.idle, 1):,.0f} B | {m['held']:,} | "
              f"{m['kib'] / max(memory['nginx']['kib'], 1):.2f} | {m['kib'] / max(memory['HAProxy']['kib'], 1):.2f} |")


if __name__ == "__main__":
    main()
