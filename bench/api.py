"""The API under keep-alive load: `get apps` and `apply` of one App, for the build before TLS and roles (plain HTTP,
the data directory's token) against this build over TLS with a named deployer token bound to one namespace, and this
build over plain HTTP (the same authorization, no TLS). Interleaved rounds, medians; ratios against the baseline."""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import api_call, free_port, wait_until, wrk  # noqa: E402

APPS = 20


def app(name, ns="bench"):
    return {"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 0, "run": {"command": ["/bin/true"]}, "ports": [{"name": "http"}]}}


class Plane:
    """One `capstan up` with APPS Apps of no replicas in namespace `bench` (what `get apps` lists)."""

    def __init__(self, exe, args=(), named_token=False):
        self.data = tempfile.mkdtemp(prefix="capstan-api-bench-")
        self.port = free_port()
        env = dict(os.environ, CAPSTAN_DATA=os.path.join(self.data, "d"), CAPSTAN_LOG="warn",
                   CAPSTAN_CONFIG=os.path.join(self.data, "config"))
        self.dir = env["CAPSTAN_DATA"]
        self.proc = subprocess.Popen([exe, "up", "--listen", f"127.0.0.1:{self.port}", *args], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: os.path.exists(f"{self.dir}/server.json"), 30, 0.02)
        self.token = open(f"{self.dir}/token").read().strip()
        api_call(self.dir, self.token, "POST", "/api/v1/apply", {"objects": [app(f"a{i}") for i in range(APPS)]})
        if named_token:
            made = api_call(self.dir, self.token, "POST", "/api/v1/tokens",
                            {"name": "bench", "role": "deployer", "namespace": "bench"})
            self.token = made["token"]
        self.url = json.load(open(f"{self.dir}/server.json"))["url"]

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        shutil.rmtree(self.data, ignore_errors=True)


def apply_script(d):
    """A wrk script that POSTs an apply of one (unchanged) App."""
    body = json.dumps({"objects": [app("a0")]}).replace("\\", "\\\\").replace('"', '\\"')
    path = os.path.join(d, "apply.lua")
    with open(path, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "application/json"\n')
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--baseline", required=True, help="the capstan binary of the build before TLS and roles")
    ap.add_argument("--pgo-exe", help="the PGO release build's capstan")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=8)
    a = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="capstan-api-bench-")
    script = apply_script(scratch)
    setups = [
        ("before TLS and roles (plain HTTP, data-dir token)", a.baseline, [], False),
        ("this build, plain HTTP, named deployer token", f"{a.bin}/capstan", ["--plain-http"], True),
        ("this build, TLS, named deployer token", f"{a.bin}/capstan", [], True),
    ]
    if a.pgo_exe:
        setups.append(("PGO release build, TLS, named deployer token", a.pgo_exe, [], True))
    results = {name: {"get": [], "apply": []} for name, *_ in setups}
    for _ in range(a.rounds):
        for name, exe, args, named in setups:
            p = Plane(exe, args, named)
            try:
                auth = [f"Authorization: Bearer {p.token}"]
                get_url = f"{p.url}/api/v1/apps?namespace=bench"
                wrk(get_url, 2, a.conns, auth)  # warm-up
                results[name]["get"].append(wrk(get_url, a.seconds, a.conns, auth))
                results[name]["apply"].append(wrk(f"{p.url}/api/v1/apply", a.seconds, a.conns, auth, script))
            finally:
                p.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    base = setups[0][0]

    def med(name, op, key):
        return statistics.median(r[key] for r in results[name][op])

    print(f"Medians of {a.rounds} interleaved rounds of {a.seconds} s, wrk -t2 -c{a.conns}, keep-alive; "
          f"`get apps` lists {APPS} Apps, `apply` sends one unchanged App.")
    print("| build and transport | get apps req/s | p99 ms | apply req/s | p99 ms | errors | get req/s vs before | "
          "apply req/s vs before |")
    print("|---|---|---|---|---|---|---|---|")
    for name, *_ in setups:
        errors = sum(r["errors"] for op in ("get", "apply") for r in results[name][op])
        print(f"| {name} | {med(name, 'get', 'rps'):.0f} | {med(name, 'get', 'p99_ms'):.2f} | "
              f"{med(name, 'apply', 'rps'):.0f} | {med(name, 'apply', 'p99_ms'):.2f} | {errors} | "
              f"{med(name, 'get', 'rps') / med(base, 'get', 'rps'):.2f} | "
              f"{med(name, 'apply', 'rps') / med(base, 'apply', 'rps'):.2f} |")
    with open("/tmp/capstan-bench-api.json", "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
