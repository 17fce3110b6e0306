"""Helpers shared by the benchmark scripts: process memory, free ports, polling, and a `capstan up` to drive."""

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


def server_of(data):
    """The API's URL and an SSL context trusting its local CA, from the `server.json` `capstan up` wrote in `data`
    (the context is None for plain HTTP)."""
    info = json.load(open(f"{data}/server.json"))
    ctx = ssl.create_default_context(cafile=info["ca"]) if info.get("ca") else None
    return info["url"], ctx


def api_call(data, token, method, path, body=None, timeout=30):
    """One API request to the `capstan up` of data directory `data`; its JSON answer."""
    url, ctx = server_of(data)
    req = urllib.request.Request(f"{url}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
        return json.load(r)


class Capstan:
    def __init__(self, bindir, args=(), nofile=None, exe=None):
        """`capstan up` (`exe`, or the one in `bindir`) with extra `args`; `nofile` sets its open-file limit (soft
        and hard; raising it needs the privilege to)."""
        self.bindir = bindir
        self.data = tempfile.mkdtemp(prefix="capstan-bench-")
        self.port = free_port()
        env = dict(os.environ, CAPSTAN_DATA=self.data, CAPSTAN_LOG="warn")

        def limits():
            if nofile:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(
            [exe or f"{bindir}/capstan", "up", "--listen", f"127.0.0.1:{self.port}", *args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=limits)
        wait_until(lambda: os.path.exists(f"{self.data}/server.json"), 20, 0.02)
        self.token = open(f"{self.data}/token").read().strip()

    def api(self, method, path, body=None):
        return api_call(self.data, self.token, method, path, body)

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
        # Benchmarks write gigabytes (volume sync copies 1 GiB twice): never leave them behind.
        shutil.rmtree(self.data, ignore_errors=True)


def wrk(url, seconds, conns, headers=(), script=None, threads=2):
    """Runs wrk (2 threads unless told, keep-alive) and reads its report: req/s, requests, p50/p99 in ms, and errors
    (non-2xx responses and socket errors)."""
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    # wrk prints "Non-2xx or 3xx responses: N" and "Socket errors: connect N, read N, write N, timeout N".
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)

    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
    return {"rps": rps, "requests": total, "p50_ms": lat(50), "p99_ms": lat(99), "errors": errors}


def exposition_server(port, lines_for):
    """An HTTP server on 127.0.0.1:`port` (not yet serving) that answers each GET with the lines `lines_for(path)`
    gives, as Prometheus' 0.0.4 text format."""
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = ("\n".join(lines_for(self.path)) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", port), H)
    srv.daemon_threads = True
    return srv
