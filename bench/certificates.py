"""Certificates that issue themselves: Capstan against Caddy (Debian's), same run, same machine.

1. ACME, time to serve: from the process start with its configuration (`capstan up DIR` with a Gateway, an ACME
   Issuer and a Certificate; `caddy run` with a Caddyfile naming the same ACME server) to the first HTTPS answer with
   a certificate from that server, verified against its root. The server is Debian's pebble (Let's Encrypt's test
   server, no validation sleeps) on loopback, its DNS test server resolving every name to 127.0.0.1; a new pebble
   per round, rounds interleaved, medians reported.
2. Scale: 1,000 certificates from a local CA (Capstan: a selfSigned Issuer's CA and a CA Issuer, 1,000 ECDSA
   Certificates applied at once; Caddy: 1,000 sites with `tls internal`): time until all are issued, resident memory
   and CPU time spent, then the CPU both spend idle over 30 s holding them (renewal scheduling at scale).
"""

import argparse
import json
import os
import shutil
import signal
import ssl
import socket
import subprocess
import tempfile
import time
import urllib.request

from common import Capstan, free_port, rss_kib, wait_until

HOST = "bench.example.test"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Pebble:
    """pebble and pebble-challtestsrv on loopback; pebble's own TLS certificate from a CA made here."""

    def __init__(self, http_port, tls_port):
        self.dir = tempfile.mkdtemp(prefix="bench-pebble-")
        d = self.dir
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=bench pebble CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
                "-keyout", "key.pem", "-out", "req.csr", cwd=d)
        with open(f"{d}/ext.cnf", "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", "ext.cnf", "-out", "cert.pem", cwd=d)
        self.port, self.management, dns = free_port(), free_port(), free_port()
        json.dump({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": f"{d}/cert.pem", "privateKey": f"{d}/key.pem", "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}, open(f"{d}/pebble.json", "w"))
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.dns = subprocess.Popen(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                                     "-http01", "", "-https01", "", "-tlsalpn01", "", "-dns01", f"127.0.0.1:{dns}",
                                     "-management", f"127.0.0.1:{free_port()}"], **quiet)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        self.proc = subprocess.Popen(["pebble", "-config", f"{d}/pebble.json", "-dnsserver", f"127.0.0.1:{dns}"],
                                     env=env, **quiet)
        wait_until(lambda: self.get("/roots/0"), 20, 0.05)
        self.ca = f"{d}/ca.pem"
        with open(f"{d}/root.pem", "w") as f:
            f.write(self.get("/roots/0"))
        self.root = f"{d}/root.pem"

    def get(self, path):
        ctx = ssl.create_default_context(cafile=f"{self.dir}/ca.pem")
        try:
            with urllib.request.urlopen(f"https://localhost:{self.management}{path}", context=ctx, timeout=2) as r:
                return r.read().decode()
        except Exception:
            return None

    def directory(self):
        return f"https://127.0.0.1:{self.port}/dir"

    def stop(self):
        for p in (self.proc, self.dns):
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def served(port, root, host=HOST):
    """Whether an HTTPS request for `host` on 127.0.0.1:`port` gets a 200 with a certificate verified by `root`."""
    ctx = ssl.create_default_context(cafile=root)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            with ctx.wrap_socket(s, server_hostname=host) as t:
                t.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                return t.recv(64).startswith(b"HTTP/1.1 200")
    except Exception:
        return False


def capstan_acme(a, pebble, http, https):
    d = tempfile.mkdtemp(prefix="bench-acme-manifests-")
    import base64
    bundle = base64.b64encode(open(pebble.ca, "rb").read()).decode()
    objs = [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "web"},
         "spec": {"gatewayClassName": "capstan", "addresses": [{"value": "127.0.0.1"}], "listeners": [
             {"name": "http", "port": http, "protocol": "HTTP"},
             {"name": "https", "port": https, "protocol": "HTTPS", "hostname": HOST,
              "tls": {"certificateRefs": [{"name": "bench-tls"}]}}]}},
        {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "pebble"},
         "spec": {"acme": {"server": pebble.directory(), "caBundle": bundle,
                           "privateKeySecretRef": {"name": "pebble-account"},
                           "solvers": [{"http01": {"gatewayHTTPRoute": {"parentRefs": [{"name": "web",
                                                                                         "sectionName": "http"}]}}}]}}},
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "bench"},
         "spec": {"secretName": "bench-tls", "dnsNames": [HOST], "privateKey": {"algorithm": "ECDSA"},
                  "issuerRef": {"name": "pebble"}}},
        {"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": "hello"},
         "spec": {"run": {"command": [f"{a.bin}/capstan-hello"]}, "ports": [{"name": "http"}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "hello"},
         "spec": {"parentRefs": [{"name": "web", "sectionName": "https"}],
                  "rules": [{"backendRefs": [{"name": "hello", "port": 8080}]}]}},
    ]
    with open(f"{d}/site.yaml", "w") as f:
        f.write("\n---\n".join(json.dumps(o) for o in objs))
    start = time.monotonic()
    c = Capstan(a.bin, args=[d])
    try:
        wait_until(lambda: served(https, pebble.root), 120, 0.01)
        return time.monotonic() - start
    finally:
        c.stop()
        shutil.rmtree(d, ignore_errors=True)


def caddy_config(d, sites, http, https, acme=None):
    lines = ["{", "  admin off", f"  http_port {http}", f"  https_port {https}", f"  storage file_system {d}/data",
             "  skip_install_trust", "  ocsp_stapling off"]
    if acme:
        lines += [f"  acme_ca {acme[0]}", f"  acme_ca_root {acme[1]}"]
    lines.append("}")
    lines += sites
    with open(f"{d}/Caddyfile", "w") as f:
        f.write("\n".join(lines) + "\n")


def caddy(d, log):
    env = dict(os.environ, HOME=d, XDG_DATA_HOME=f"{d}/xdg", XDG_CONFIG_HOME=f"{d}/xdg")
    return subprocess.Popen(["caddy", "run", "--config", f"{d}/Caddyfile", "--adapter", "caddyfile"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def caddy_acme(pebble, http, https):
    d = tempfile.mkdtemp(prefix="bench-caddy-")
    caddy_config(d, [f"{HOST} {{", "  respond \"hello\"", "}"], http, https, (pebble.directory(), pebble.ca))
    start = time.monotonic()
    p = caddy(d, f"{d}/caddy.log")
    try:
        wait_until(lambda: served(https, pebble.root), 120, 0.01)
        return time.monotonic() - start
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        shutil.rmtree(d, ignore_errors=True)


def capstan_scale(a, n):
    c = Capstan(a.bin)
    try:
        c.apply([
            {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "selfsigned"},
             "spec": {"selfSigned": {}}},
            {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "root"},
             "spec": {"isCA": True, "commonName": "bench root", "secretName": "root-ca",
                      "privateKey": {"algorithm": "ECDSA"}, "issuerRef": {"name": "selfsigned"}}},
            {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "ca"},
             "spec": {"ca": {"secretName": "root-ca"}}}])
        wait_until(lambda: ready_count(c) == 1, 60, 0.05)
        cpu0, start = cpu_seconds(c.proc.pid), time.monotonic()
        c.apply([{"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": f"site{i}"},
                  "spec": {"secretName": f"site{i}-tls", "dnsNames": [f"site{i}.example.test"],
                           "privateKey": {"algorithm": "ECDSA"}, "issuerRef": {"name": "ca"}}}
                 for i in range(n)])
        wait_until(lambda: ready_count(c) == n + 1, 600, 0.2)
        took, cpu = time.monotonic() - start, cpu_seconds(c.proc.pid) - cpu0
        settled = settle(c.proc.pid)
        rss = rss_kib(c.proc.pid)
        idle0 = cpu_seconds(c.proc.pid)
        time.sleep(a.idle)
        return {"seconds": took, "cpu": cpu, "settle": settled, "rss_mib": rss / 1024,
                "idle_cpu": cpu_seconds(c.proc.pid) - idle0}
    finally:
        c.stop()


def settle(pid, window=5.0, quiet=0.25, limit=300.0):
    """The CPU seconds a process spends after its work is reported done, until a `window` passes with less than
    `quiet` CPU seconds used (work still queued: status writes, other controllers catching up)."""
    start = cpu_seconds(pid)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < quiet:
            break
    return cpu_seconds(pid) - start


def ready_count(c):
    items = c.api("GET", "/api/v1/certificates")["items"]
    return sum(1 for o in items if any(x["type"] == "Ready" and x["status"] == "True"
                                       for x in (o.get("status") or {}).get("conditions", [])))


def caddy_scale(a, n):
    d = tempfile.mkdtemp(prefix="bench-caddy-scale-")
    sites = []
    for i in range(n):
        sites += [f"site{i}.example.test {{", "  tls internal", "  respond \"ok\"", "}"]
    caddy_config(d, sites, free_port(), free_port())
    log = f"{d}/caddy.log"
    start = time.monotonic()
    p = caddy(d, log)
    try:
        def obtained():
            try:
                return open(log).read().count("certificate obtained successfully") >= n
            except OSError:
                return False
        wait_until(obtained, 600, 0.2)
        took, cpu = time.monotonic() - start, cpu_seconds(p.pid)
        settled = settle(p.pid)
        rss = rss_kib(p.pid)
        idle0 = cpu_seconds(p.pid)
        time.sleep(a.idle)
        return {"seconds": took, "cpu": cpu, "settle": settled, "rss_mib": rss / 1024,
                "idle_cpu": cpu_seconds(p.pid) - idle0}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--certificates", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--only-scale", action="store_true", help="skip the ACME rounds")
    a = ap.parse_args()
    version = subprocess.run(["caddy", "version"], capture_output=True, text=True).stdout.split()[0]
    times = {"Capstan": [], "Caddy": []}
    for r in range(0 if a.only_scale else a.rounds):
        for name in (["Capstan", "Caddy"] if r % 2 == 0 else ["Caddy", "Capstan"]):
            http, https = free_port(), free_port()
            pebble = Pebble(http, https)
            try:
                t = capstan_acme(a, pebble, http, https) if name == "Capstan" else caddy_acme(pebble, http, https)
            finally:
                pebble.stop()
            times[name].append(t)
            print(f"round {r + 1}: {name} served its ACME certificate after {t * 1000:.0f} ms", flush=True)
    scale = {"Capstan": capstan_scale(a, a.certificates), "Caddy": caddy_scale(a, a.certificates)}
    out = {"caddy": version, "acme_seconds": times, "scale": scale}
    json.dump(out, open("/tmp/capstan-bench-certificates.json", "w"), indent=2)
    if times["Capstan"]:
        c, k = median(times["Capstan"]), median(times["Caddy"])
        print(f"\nACME (pebble) from process start to the first verified HTTPS answer, median of {a.rounds}:")
        print("| | Capstan | Caddy " + version + " | Capstan / Caddy |\n|---|---|---|---|")
        print(f"| time to serve | {c * 1000:.0f} ms | {k * 1000:.0f} ms | {c / k:.2f} |")
    print(f"\n{a.certificates} certificates from a local CA:")
    print("| | Capstan | Caddy " + version + " | Capstan / Caddy |\n|---|---|---|---|")
    s, t = scale["Capstan"], scale["Caddy"]
    for label, key, unit in [("all issued", "seconds", "s"), ("CPU to issue", "cpu", "s"),
                             ("CPU after, until quiet", "settle", "s"),
                             ("resident memory holding them", "rss_mib", " MiB"),
                             (f"CPU idle over {a.idle:.0f} s", "idle_cpu", "s")]:
        ratio = s[key] / t[key] if t[key] else float("nan")
        print(f"| {label} | {s[key]:.2f}{unit} | {t[key]:.2f}{unit} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
