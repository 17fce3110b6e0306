#!/usr/bin/env python3
"""Volume sync against cp -a and rsync -a. Run through bench/volume.sh."""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Capstan, wait_until  # noqa: E402


def fill(path, mib):
    """`mib` MiB in 16 MiB files, plus 2,000 small files in subdirectories, like an index with segments."""
    os.makedirs(path, exist_ok=True)
    block = os.urandom(1 << 20)
    for i in range(mib // 16):
        with open(os.path.join(path, f"segment-{i:04d}.bin"), "wb") as f:
            for j in range(16):
                f.write(block[j:] + block[:j])
    for i in range(2000):
        d = os.path.join(path, f"meta/{i % 20:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"doc-{i}.json"), "w") as f:
            f.write('{"id": %d, "terms": "%s"}\n' % (i, "x" * 200))


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    c = Capstan(a.bin)
    spec = {"replicas": 2, "run": {"command": [f"{a.bin}/capstan-hello"]}, "ports": [{"name": "http"}],
            "probes": {"readiness": {"http": {"path": "/status", "port": "http"}, "periodSeconds": 1}},
            "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "data", "scope": "replica", "env": "DATA_DIR"}]}
    c.apply([{"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": "vs"}, "spec": spec}])
    wait_until(lambda: c.all_ready(1), 60, 0.05)
    vol = os.path.join(c.data, "volumes/default/vs/data")
    src, target = os.path.join(vol, "replica-0"), os.path.join(vol, "replica-1")
    fill(src, a.mib)
    scratch = tempfile.mkdtemp(prefix="bench-volume-")
    res = {k: [] for k in ("capstan_full", "cp_full", "rsync_full", "capstan_incr", "rsync_incr", "paused_ms")}

    def capstan_sync():
        t0 = time.perf_counter()
        r = c.api("POST", "/api/v1/namespaces/default/apps/vs/volumes/data/sync", {"from": 0, "to": 1})
        return time.perf_counter() - t0, r

    for r in range(a.rounds):
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        dst_cp, dst_rs = os.path.join(scratch, "cp"), os.path.join(scratch, "rsync")
        shutil.rmtree(dst_cp, ignore_errors=True)
        shutil.rmtree(dst_rs, ignore_errors=True)
        steps = [("capstan_full", lambda: capstan_sync()[0]),
                 ("cp_full", lambda: timed(["cp", "-a", src, dst_cp])),
                 ("rsync_full", lambda: timed(["rsync", "-a", src + "/", dst_rs + "/"]))]
        for name, step in (steps if r % 2 == 0 else steps[::-1]):
            res[name].append(step())
        wait_until(lambda: c.all_ready(1), 60, 0.05)
        # One segment rewritten and one document added: what an index does between two syncs.
        with open(os.path.join(src, "segment-0000.bin"), "r+b") as f:
            f.write(os.urandom(4096))
        with open(os.path.join(src, "meta/00/doc-new.json"), "w") as f:
            f.write('{"id": -1}\n')
        incr = [("capstan_incr", capstan_sync), ("rsync_incr", lambda: (timed(["rsync", "-a", src + "/", dst_rs + "/"]), None))]
        for name, step in (incr if r % 2 == 0 else incr[::-1]):
            t, rep = step()
            res[name].append(t)
            if rep:
                res["paused_ms"].append(rep["frozenMillis"])
        wait_until(lambda: c.all_ready(1), 60, 0.05)
    c.stop()
    shutil.rmtree(scratch)

    med = statistics.median
    ms = lambda x: f"{x * 1000:.0f} ms"  # noqa: E731
    print(f"Volume: {a.mib} MiB in {a.mib // 16} files of 16 MiB plus 2,000 small files; {a.rounds} interleaved rounds, medians.\n")
    print("| measure | Capstan volume sync | cp -a | rsync -a | Capstan / cp | Capstan / rsync |")
    print("|---|---|---|---|---|---|")
    print(f"| whole volume | {ms(med(res['capstan_full']))} | {ms(med(res['cp_full']))} | {ms(med(res['rsync_full']))} | "
          f"{med(res['capstan_full']) / med(res['cp_full']):.2f} | {med(res['capstan_full']) / med(res['rsync_full']):.2f} |")
    print(f"| after one segment changed | {ms(med(res['capstan_incr']))} | – | {ms(med(res['rsync_incr']))} | – | "
          f"{med(res['capstan_incr']) / med(res['rsync_incr']):.2f} |")
    print(f"\nSource replica paused for the last pass: {med(res['paused_ms']):.0f} ms (median). Capstan's times include "
          "draining and stopping the target replica; cp and rsync copy between idle directories.")


if __name__ == "__main__":
    main()
