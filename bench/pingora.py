#!/usr/bin/env python3
"""The engine question of issue 23: Capstan's balancer (hyper, rustls) against a spike of Pingora's proxy
(bench/pingora-spike, pingora-proxy with rustls) and nginx, in front of the same two backends, same run. Run
through bench/pingora.sh, which also times both builds."""

import argparse
import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import free_port  # noqa: E402
from lb import Capstan as PlainCapstan, children, instructions_per_request, nginx as plain_nginx, wait_http  # noqa: E402
from tls import PATH, Capstan, certificate, h2load, measure, median, nginx as tls_nginx, wait_tls  # noqa: E402


def spike(exe, backends, d, plain_port, tls_port, crt, key, threads=2, wrap=()):
    """The Pingora spike with `threads` worker threads: plain HTTP on `plain_port`, TLS (h2 and http/1.1) on
    `tls_port` when given."""
    conf = f"{d}/pingora-{plain_port}.yaml"
    # A stop is quick: the benchmark's clients are gone by then.
    open(conf, "w").write(f"---\nversion: 1\nthreads: {threads}\ngrace_period_seconds: 1\n"
                          "graceful_shutdown_timeout_seconds: 1\n")
    env = dict(os.environ, SPIKE_LISTEN=f"127.0.0.1:{plain_port}",
               SPIKE_UPSTREAMS=",".join(f"127.0.0.1:{b}" for b in backends))
    if tls_port:
        env.update(SPIKE_TLS_LISTEN=f"127.0.0.1:{tls_port}", SPIKE_CERT=crt, SPIKE_KEY=key)
    return subprocess.Popen([*wrap, exe, "-c", conf], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the release build's directory (capstan, capstan-hello)")
    ap.add_argument("--pingora", required=True, help="the spike's binary")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instr-seconds", type=int, default=10, help="wrk time under callgrind per proxy; 0 skips")
    ap.add_argument("--build", action="append", default=[], help="LABEL=SECONDS of a cold build, reported")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pingora-bench-")
    crt, key = certificate(d)
    ports = {"https": free_port(), "http": free_port(), "expose": free_port()}
    c = Capstan(a.bin, f"{a.bin}/capstan", crt, key, ports["https"], ports["http"], ports["expose"], 0)
    procs = []
    try:
        p_plain, p_tls = free_port(), free_port()
        p = spike(a.pingora, c.backends, d, p_plain, p_tls, crt, key)
        procs.append(p)
        n_plain, n_tls = free_port(), free_port()
        os.makedirs(f"{d}/plain", exist_ok=True)
        os.makedirs(f"{d}/tls", exist_ok=True)
        np_ = plain_nginx(c.backends, n_plain, f"{d}/plain")
        procs.append(np_)
        nt = tls_nginx(c.backends, n_tls, f"{d}/tls", crt, key)
        procs.append(nt)
        pid = lambda proc: (lambda: [proc.pid] + children(proc.pid))  # noqa: E731
        plain = [("Capstan", ports["expose"], lambda: [c.proc.pid]), ("Pingora spike", p_plain, pid(p)),
                 ("nginx", n_plain, pid(np_))]
        tls = [("Capstan", ports["https"], lambda: [c.proc.pid]), ("Pingora spike", p_tls, pid(p)),
               ("nginx", n_tls, pid(nt))]
        for _, port, _ in plain:
            wait_http(f"http://127.0.0.1:{port}{PATH}")
        for _, port, _ in tls:
            wait_tls(port)
        tables = {"plain HTTP keep-alive": {}, "HTTPS keep-alive": {}, "HTTP/2": {}}
        for _ in range(a.rounds):  # interleaved: every proxy sees the same machine conditions
            for label, port, pids in plain:
                tables["plain HTTP keep-alive"].setdefault(label, []).append(
                    measure(f"http://127.0.0.1:{port}{PATH}", pids, a.seconds, a.conns))
            for label, port, pids in tls:
                url = f"https://127.0.0.1:{port}{PATH}"
                tables["HTTPS keep-alive"].setdefault(label, []).append(measure(url, pids, a.seconds, a.conns))
                tables["HTTP/2"].setdefault(label, []).append(h2load(url, a.seconds, a.conns, 10))
        instr = {}
        if a.instr_seconds > 0:
            held = {}

            def start_capstan(wrap):
                held["c"] = PlainCapstan(a.bin, cport, free_port(), api=free_port(), wrap=wrap)
                return held["c"].proc
            cport = free_port()
            try:
                instr["Capstan"] = instructions_per_request(start_capstan, cport, PATH, d, a.instr_seconds)
            finally:
                if "c" in held:
                    subprocess.run(["rm", "-rf", held["c"].data])
            port = free_port()
            instr["Pingora spike"] = instructions_per_request(
                lambda wrap: spike(a.pingora, c.backends, d, port, None, crt, key, threads=1, wrap=wrap),
                port, PATH, d, a.instr_seconds)
            np2 = free_port()
            os.makedirs(f"{d}/instr", exist_ok=True)
            instr["nginx"] = instructions_per_request(
                lambda wrap: plain_nginx(c.backends, np2, f"{d}/instr", workers=1, prefix="master_process off;\n",
                                         wrap=wrap), np2, PATH, d, a.instr_seconds)
        report(a, tables, instr)
    finally:
        for proc in procs:
            if proc.poll() is None:
                # Pingora's fast shutdown is SIGINT (SIGTERM waits out its grace period); nginx's is SIGTERM.
                proc.send_signal(signal.SIGINT if proc is procs[0] else signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        c.stop()  # Capstan stops its backends: none is left behind
        subprocess.run(["rm", "-rf", c.data, d])


def report(a, tables, instr):
    print(f"\n{a.conns} connections, {a.seconds} s per run, median of {a.rounds} interleaved rounds, 1 KiB answers; "
          f"Pingora and nginx with two worker threads, Capstan with one per core ({os.cpu_count()} cores)\n")
    for title, rows in tables.items():
        rows = {label: median(rs, "rps") for label, rs in rows.items()}
        unit = "req/s, h2load -c50 -m10" if title == "HTTP/2" else "req/s, wrk"
        print(f"**{title}** ({unit})\n")
        print("| proxy | req/s | all rounds | p99 | CPU per request | vs Capstan | vs nginx |")
        print("|---|---|---|---|---|---|---|")
        for label, r in rows.items():
            p99 = f"{r['p99_ms']:.2f} ms" if "p99_ms" in r else ""
            cpu = f"{r['cpu_us_per_req']:.1f} µs" if "cpu_us_per_req" in r else ""
            print(f"| {label} | {r['rps']:.0f} | {', '.join(map(str, r['all']))} | {p99} | {cpu} | "
                  f"{r['rps'] / rows['Capstan']['rps']:.2f} | {r['rps'] / rows['nginx']['rps']:.2f} |")
        print()
    if instr:
        print(f"User-space instructions per request, plain HTTP (callgrind, whole process, one thread, {a.instr_seconds} s "
              "of wrk -t1 -c8):\n")
        print("| proxy | requests counted | instructions per request | vs nginx |")
        print("|---|---|---|---|")
        for k, (reqs, ipr) in instr.items():
            print(f"| {k} | {reqs} | {ipr:,.0f} | {ipr / instr['nginx'][1]:.2f} |")
        print()
    if a.build:
        print("Cold release builds on this machine (a fresh target directory, dependencies included):\n")
        print("| build | seconds |")
        print("|---|---|")
        for b in a.build:
            label, secs = b.rsplit("=", 1)
            print(f"| {label} | {secs} |")


if __name__ == "__main__":
    main()
