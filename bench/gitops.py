#!/usr/bin/env python3
"""GitOps benchmarks, run through bench/gitops.sh:

1. fetch of a repository with 10,000 files and 5,000 commits served by `git daemon` on loopback: Capstan's gix fetch
   plus artifact checkout against `git clone --depth 1` (the git CLI), cold and incremental, interleaved rounds;
2. commit-to-Ready latency through the webhook and through polling (Source interval 5s), with the App's own
   start time measured alone for reference;
3. Capstan's memory with 100 Sources and 100 Syncs, all Ready.
"""

import argparse
import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Capstan, free_port, rss_kib, server_of, wait_until  # noqa: E402

GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="b@example.com",
               GIT_COMMITTER_NAME="Bench", GIT_COMMITTER_EMAIL="b@example.com", GIT_CONFIG_NOSYSTEM="1")


def git(cwd, *args, stdin=None):
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, input=stdin, check=True,
                          capture_output=True).stdout.decode().strip()


def big_repo(path, files, commits):
    """A bare repository: one commit adding `files` files, then `commits - 1` commits changing one file each."""
    os.makedirs(path)
    git(path, "init", "-q", "--bare", "-b", "main")
    out = []
    ts = 1_700_000_000

    def blob(text):
        b = text.encode()
        return b"data %d\n" % len(b) + b + b"\n"

    out.append(b"commit refs/heads/main\nmark :1\ncommitter Bench <b@example.com> %d +0000\n" % ts)
    out.append(blob("initial"))
    for i in range(files):
        out.append(b"M 100644 inline files/d%03d/f%05d.yaml\n" % (i // 100, i))
        out.append(blob(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: f{i}\ndata:\n  value: \"{i * 7919}\"\n"))
    for c in range(2, commits + 1):
        out.append(b"commit refs/heads/main\nmark :%d\ncommitter Bench <b@example.com> %d +0000\n" % (c, ts + c))
        out.append(blob(f"change {c}"))
        out.append(b"from :%d\n" % (c - 1))
        out.append(b"M 100644 inline files/d%03d/f%05d.yaml\n" % ((c % files) // 100, c % files))
        out.append(blob(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: f{c % files}\ndata:\n  value: \"{c}\"\n"))
    git(path, "fast-import", "--quiet", stdin=b"".join(out))


class Daemon:
    def __init__(self, base):
        self.port = free_port()
        self.proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
                                      "--listen=127.0.0.1", f"--port={self.port}", f"--base-path={base}", base],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_until(up, 10, 0.02)

    def url(self, name):
        return f"git://127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def timed(cmd, **kw):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def add_commit(bare, n):
    """Adds one commit to a bare repository's main (through a throw-away clone of depth 1)."""
    work = tempfile.mkdtemp(prefix="bench-push-")
    git(work, "clone", "-q", "--depth", "1", f"file://{bare}", ".")
    with open(os.path.join(work, "files/d000/f00000.yaml"), "a") as f:
        f.write(f"# edit {n}\n")
    git(work, "commit", "-q", "-am", f"edit {n}")
    git(work, "push", "-q", "origin", "HEAD:main")
    shutil.rmtree(work)


def run_fetch(fetch, url, cdir):
    """Capstan's fetch example: wall seconds, and its own fetch and checkout milliseconds."""
    t0 = time.perf_counter()
    out = subprocess.run([fetch, url, "main", cdir], check=True, capture_output=True).stdout
    wall = time.perf_counter() - t0
    j = json.loads(out)
    return wall, j["fetch_ms"] / 1000, j["checkout_ms"] / 1000


def fetch_bench(bindir, rounds, files, commits):
    base = tempfile.mkdtemp(prefix="bench-git-")
    bare = os.path.join(base, "big.git")
    t0 = time.perf_counter()
    big_repo(bare, files, commits)
    made = time.perf_counter() - t0
    d = Daemon(base)
    url = d.url("big.git")
    keys = ["git_full", "git_fetch", "capstan_full", "capstan_fetch",
            "git_full_incr", "git_fetch_incr", "capstan_full_incr", "capstan_fetch_incr"]
    res = {k: [] for k in keys}
    res["repo_s"] = made
    fetch = os.path.join(bindir, "examples", "fetch")
    spec = "+refs/heads/main:refs/heads/main"
    for r in range(rounds):
        work = tempfile.mkdtemp(prefix="bench-fetch-")
        gdir, gbare, cdir = (os.path.join(work, n) for n in ("git", "git-bare", "capstan"))
        os.makedirs(cdir)
        git(work, "init", "-q", "--bare", gbare)

        def capstan(suffix):
            wall, f, _ = run_fetch(fetch, url, cdir)
            res[f"capstan_full{suffix}"].append(wall)
            res[f"capstan_fetch{suffix}"].append(f)

        cold = [
            lambda: res["git_full"].append(timed(["git", "clone", "-q", "--depth", "1", "--single-branch", "--branch",
                                                  "main", url, gdir], env=GIT_ENV)),
            lambda: res["git_fetch"].append(timed(["git", "-C", gbare, "fetch", "-q", "--depth", "1", url, spec],
                                                  env=GIT_ENV)),
            lambda: capstan(""),
        ]
        for step in (cold if r % 2 == 0 else cold[::-1]):
            step()
        add_commit(bare, r)
        incr = [
            lambda: res["git_full_incr"].append(timed(["sh", "-c", "git fetch -q origin main && git reset -q --hard FETCH_HEAD"],
                                                      cwd=gdir, env=GIT_ENV)),
            lambda: res["git_fetch_incr"].append(timed(["git", "-C", gbare, "fetch", "-q", url, spec], env=GIT_ENV)),
            lambda: capstan("_incr"),
        ]
        for step in (incr if r % 2 == 0 else incr[::-1]):
            step()
        shutil.rmtree(work)
    d.stop()
    shutil.rmtree(base)
    return res


APP = """apiVersion: capstan.dev/v1alpha1
kind: App
metadata:
  name: {name}
spec:
  replicas: 1
  run:
    command: [{hello}]
    env:
      VERSION: "{version}"
  ports:
    - name: http
  probes:
    readiness:
      http: {{path: /status, port: http}}
      periodSeconds: 1
  terminationGracePeriodSeconds: 5
"""


def commit_version(work, name, hello, version):
    """Commits the App manifest with a new VERSION; returns the commit id."""
    with open(os.path.join(work, "app.yaml"), "w") as f:
        f.write(APP.format(name=name, hello=hello, version=version))
    git(work, "commit", "-q", "-am", f"v{version}")
    return git(work, "rev-parse", "HEAD")


def sync_obj(c, name):
    return c.api("GET", f"/api/v1/namespaces/default/syncs/{name}")


def applied(c, name, commit):
    o = sync_obj(c, name)
    st = o.get("status") or {}
    ready = any(x["type"] == "Ready" and x["status"] == "True" for x in st.get("conditions", []))
    return ready and st.get("lastAppliedRevision") == f"main@sha1:{commit}"


def latency_bench(bindir, rounds, poll_rounds):
    base = tempfile.mkdtemp(prefix="bench-lat-")
    hello = os.path.join(bindir, "capstan-hello")
    repos = {}
    for name in ("hook", "poll"):
        work = os.path.join(base, name)
        os.makedirs(work)
        git(work, "init", "-q", "-b", "main")
        with open(os.path.join(work, "app.yaml"), "w") as f:
            f.write(APP.format(name=f"{name}-app", hello=hello, version=0))
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", "v0")
        repos[name] = work
    d = Daemon(base)
    c = Capstan(bindir)
    token = "bench-secret"
    objs = [
        {"apiVersion": "capstan.dev/v1alpha1", "kind": "Secret", "metadata": {"name": "hook"},
         "spec": {"stringData": {"token": token}}},
    ]
    for name, interval in (("hook", "1h"), ("poll", "5s")):
        objs.append({"apiVersion": "capstan.dev/v1alpha1", "kind": "Source", "metadata": {"name": name},
                     "spec": {"url": d.url(name), "ref": {"branch": "main"}, "interval": interval}})
        spec = {"sourceRef": {"name": name}, "interval": "1h", "prune": True, "wait": True, "timeout": "1m"}
        if name == "hook":
            spec["webhook"] = {"secretRef": {"name": "hook"}}
        objs.append({"apiVersion": "capstan.dev/v1alpha1", "kind": "Sync", "metadata": {"name": name}, "spec": spec})
    c.apply(objs)
    for name in ("hook", "poll"):
        head = git(repos[name], "rev-parse", "HEAD")
        wait_until(lambda: applied(c, name, head), 60, 0.02)

    res = {"webhook": [], "poll": [], "app_start": [], "sync_ms": []}
    for i in range(1, rounds + 1):
        head = commit_version(repos["hook"], "hook-app", hello, i)
        body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
        sig = hmac.new(token.encode(), body, hashlib.sha256).hexdigest()
        t0 = time.perf_counter()
        url, ctx = server_of(c.data)
        req = urllib.request.Request(f"{url}/hooks/default/hook", data=body, method="POST",
                                     headers={"X-Hub-Signature-256": f"sha256={sig}", "X-GitHub-Event": "push",
                                              "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10, context=ctx).read()
        wait_until(lambda: applied(c, "hook", head), 60, 0.005)
        res["webhook"].append(time.perf_counter() - t0)
        res["sync_ms"].append(sync_obj(c, "hook")["status"]["history"][0]["durationMillis"])

    # The App's own start: the same change applied directly, until Ready.
    for i in range(1, rounds + 1):
        obj = {"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": "direct"},
               "spec": {"replicas": 1, "run": {"command": [hello], "env": {"VERSION": str(i)}},
                        "ports": [{"name": "http"}],
                        "probes": {"readiness": {"http": {"path": "/status", "port": "http"}, "periodSeconds": 1}},
                        "terminationGracePeriodSeconds": 5}}
        t0 = time.perf_counter()
        c.apply([obj])

        def direct_ready():
            o = c.api("GET", "/api/v1/namespaces/default/apps/direct")
            st = o.get("status") or {}
            return (st.get("observedGeneration") == o["metadata"]["generation"]
                    and any(x["type"] == "Ready" and x["status"] == "True" for x in st.get("conditions", []))
                    and st.get("updatedReplicas") == 1 and st.get("readyReplicas") == 1)
        wait_until(direct_ready, 60, 0.005)
        res["app_start"].append(time.perf_counter() - t0)

    for i in range(1, poll_rounds + 1):
        head = commit_version(repos["poll"], "poll-app", hello, i)
        t0 = time.perf_counter()
        wait_until(lambda: applied(c, "poll", head), 60, 0.01)
        res["poll"].append(time.perf_counter() - t0)
    c.stop()
    d.stop()
    shutil.rmtree(base)
    return res


def memory_bench(bindir, n):
    base = tempfile.mkdtemp(prefix="bench-mem-")
    work = os.path.join(base, "cfg")
    os.makedirs(os.path.join(work, "secrets"))
    with open(os.path.join(work, "secrets", "s.yaml"), "w") as f:
        f.write("apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata:\n  name: s\nspec:\n"
                "  stringData:\n    key: value\n")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "one")
    d = Daemon(base)
    c = Capstan(bindir)
    idle = rss_kib(c.proc.pid)
    objs = []
    for i in range(n):
        objs.append({"apiVersion": "capstan.dev/v1alpha1", "kind": "Source", "metadata": {"name": f"src-{i}"},
                     "spec": {"url": d.url("cfg"), "ref": {"branch": "main"}, "interval": "1m"}})
        objs.append({"apiVersion": "capstan.dev/v1alpha1", "kind": "Sync", "metadata": {"name": f"sync-{i}"},
                     "spec": {"sourceRef": {"name": f"src-{i}"}, "path": "./secrets", "interval": "1m",
                              "prune": True, "targetNamespace": f"team-{i}"}})
    t0 = time.perf_counter()
    c.apply(objs)

    def all_ready():
        items = c.api("GET", "/api/v1/syncs")["items"]
        return sum(1 for o in items if any(x["type"] == "Ready" and x["status"] == "True"
                                           for x in (o.get("status") or {}).get("conditions", []))) == n
    wait_until(all_ready, 300, 0.05)
    took = time.perf_counter() - t0
    time.sleep(2)
    with open(f"/proc/{c.proc.pid}/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    res = {"idle_kib": idle, "loaded_kib": rss_kib(c.proc.pid), "peak_kib": hwm, "ready_s": took}
    c.stop()
    d.stop()
    shutil.rmtree(base)
    return res


def p(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def ms(x):
    return f"{x * 1000:.0f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--latency-rounds", type=int, default=20)
    ap.add_argument("--poll-rounds", type=int, default=6)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--commits", type=int, default=5000)
    ap.add_argument("--sources", type=int, default=100)
    a = ap.parse_args()

    f = fetch_bench(a.bin, a.rounds, a.files, a.commits)
    lat = latency_bench(a.bin, a.latency_rounds, a.poll_rounds)
    mem = memory_bench(a.bin, a.sources)

    med = statistics.median
    print(f"Repository: {a.files} files, {a.commits} commits (built in {f['repo_s']:.1f} s), "
          f"served by git daemon on 127.0.0.1; {a.rounds} interleaved rounds, medians.\n")
    print("| measure | Capstan (gix) | git CLI | ratio (Capstan / git) |")
    print("|---|---|---|---|")
    rows = [("cold: fetch (depth 1)", "capstan_fetch", "git_fetch"),
            ("cold: fetch + checkout of 10,000 files", "capstan_full", "git_full"),
            ("one new commit: fetch", "capstan_fetch_incr", "git_fetch_incr"),
            ("one new commit: fetch + checkout", "capstan_full_incr", "git_full_incr")]
    for label, c, g in rows:
        print(f"| {label} | {ms(med(f[c]))} | {ms(med(f[g]))} | {med(f[c]) / med(f[g]):.2f} |")
    print()
    print("| commit → Sync Ready (App replaced and Ready) | p50 | p95 |")
    print("|---|---|---|")
    print(f"| through the webhook ({len(lat['webhook'])} pushes) | {ms(p(lat['webhook'], .5))} | {ms(p(lat['webhook'], .95))} |")
    print(f"| the App's own start alone (same change applied directly) | {ms(p(lat['app_start'], .5))} | {ms(p(lat['app_start'], .95))} |")
    print(f"| the Sync's own reconcile (status history) | {p(lat['sync_ms'], .5)} ms | {p(lat['sync_ms'], .95)} ms |")
    print(f"| through polling, Source interval 5s ({len(lat['poll'])} commits) | {ms(p(lat['poll'], .5))} | {ms(p(lat['poll'], .95))} |")
    print()
    print(f"| {a.sources} Sources + {a.sources} Syncs (git daemon, one Secret each) | value |")
    print("|---|---|")
    print(f"| RSS idle, before | {mem['idle_kib'] / 1024:.1f} MiB |")
    print(f"| RSS with all Ready | {mem['loaded_kib'] / 1024:.1f} MiB |")
    print(f"| peak RSS (VmHWM) | {mem['peak_kib'] / 1024:.1f} MiB |")
    print(f"| apply → all {a.sources} Syncs Ready | {mem['ready_s']:.2f} s |")


if __name__ == "__main__":
    main()
