#!/usr/bin/env python3
"""Tail latency on a saturated machine: Capstan with its busy-worker yield off and on, against HAProxy.
Run through bench/lb-tail.sh; see docs/benchmarks.md (load balancing, "no worse p99 on a saturated machine")."""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from common import free_port  # noqa: E402
import lb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--limits", default="0,1000", help="CAPSTAN_LB_BUSY_YIELD_US values to compare; 0 is off")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lb-tail-")
    capstans, haproxy, targets = {}, None, []
    try:
        # One Capstan per setting, each with its own two backends; HAProxy in front of the first one's.
        for us in a.limits.split(","):
            os.environ["CAPSTAN_LB_BUSY_YIELD_US"] = us
            rr, sticky = free_port(), free_port()
            c = capstans[us] = lb.Capstan(a.bin, rr, sticky, api=free_port())
            for p in (rr, sticky):
                lb.wait_http(f"http://127.0.0.1:{p}/bytes/1024")
            cookie = urllib.request.urlopen(f"http://127.0.0.1:{sticky}/").headers["Set-Cookie"].split(";")[0]
            label = "off" if us == "0" else f"{us} µs"
            targets.append((f"Capstan, yield {label}, sticky", sticky, [c.proc.pid], [f"Cookie: {cookie}"]))
            targets.append((f"Capstan, yield {label}, round-robin", rr, [c.proc.pid], []))
        first = next(iter(capstans.values()))
        hrr, hsticky = free_port(), free_port()
        haproxy = lb.haproxy(first.backends, hrr, hsticky, d)
        for p in (hrr, hsticky):
            lb.wait_http(f"http://127.0.0.1:{p}/bytes/1024")
        targets.append(("HAProxy, sticky", hsticky, [haproxy.pid], ["Cookie: SERVERID=s0"]))
        targets.append(("HAProxy, round-robin", hrr, [haproxy.pid], []))
        # Interleaved rounds, so every setting sees the same machine.
        res = {}
        for _ in range(a.rounds):
            for name, port, pids, hdr in targets:
                r = lb.measure(name, f"http://127.0.0.1:{port}/bytes/1024", lambda pids=pids: pids, a.seconds, a.conns, hdr)
                res.setdefault(name, []).append(r)
        print(f"{a.rounds} interleaved rounds of {a.seconds} s, wrk -t2 -c{a.conns}, 1 KiB responses; medians.")
        print()
        print("| balancer | req/s | p50 | p99 | p99 of each round |")
        print("|---|---|---|---|---|")
        for name, rs in res.items():
            p99s = ", ".join(f"{r['p99_ms']:.2f}" for r in sorted(rs, key=lambda r: r["p99_ms"]))
            print(f"| {name} | {statistics.median(r['rps'] for r in rs):.0f} | "
                  f"{statistics.median(r['p50_ms'] for r in rs):.2f} ms | "
                  f"{statistics.median(r['p99_ms'] for r in rs):.2f} ms | {p99s} |")
    finally:
        if haproxy is not None and haproxy.poll() is None:
            haproxy.send_signal(signal.SIGTERM)
            haproxy.wait(timeout=30)
        for c in capstans.values():
            c.stop()
            subprocess.run(["rm", "-rf", c.data])
        subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
