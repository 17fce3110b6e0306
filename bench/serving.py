#!/usr/bin/env python3
"""Model serving and training orchestration, measured. Run through bench/serving.sh (it runs in the TensorFlow venv)."""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))
from common import free_port, wait_until, wrk  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def build_models(d):
    """A small dense model and a small CNN, saved as SavedModel and exported to ONNX with tf2onnx."""
    import numpy as np
    import tensorflow as tf
    tf.keras.utils.set_random_seed(1)
    dense = tf.keras.Sequential([tf.keras.layers.Input(shape=(16,)), tf.keras.layers.Dense(64, activation="relu"),
                                 tf.keras.layers.Dense(64, activation="relu"), tf.keras.layers.Dense(1)])
    cnn = tf.keras.Sequential([tf.keras.layers.Input(shape=(28, 28, 1)),
                               tf.keras.layers.Conv2D(8, 3, activation="relu"), tf.keras.layers.MaxPooling2D(),
                               tf.keras.layers.Conv2D(16, 3, activation="relu"), tf.keras.layers.MaxPooling2D(),
                               tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    inputs = {"dense": np.random.default_rng(1).uniform(-1, 1, (1, 16)).round(3).tolist(),
              "cnn": np.random.default_rng(2).uniform(0, 1, (1, 28, 28, 1)).round(3).tolist()}
    for name, m in [("dense", dense), ("cnn", cnn)]:
        v = os.path.join(d, name, "1")
        m.save(v)
        subprocess.run([PY, "-m", "tf2onnx.convert", "--saved-model", v, "--output", os.path.join(v, "model.onnx"),
                        "--opset", "13"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return inputs


def post_script(body, d):
    """A wrk script that POSTs `body` as JSON."""
    script = os.path.join(d, "post.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        # A level-2 long bracket: the JSON's nested lists contain "]]", which would end a plain [[…]] string.
        f.write("wrk.body = [==[" + body + "]==]\n")
    return script


def flat(v):
    return [x for item in v for x in (flat(item) if isinstance(item, list) else [item])]


def ready(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def start(kind, bindir, models, name, port):
    if kind == "Capstan (tract)":
        cmd = [f"{bindir}/capstan", "serve-model", "--model-name", name, "--model-base-path",
               os.path.join(models, name), "--rest-api-port", str(port)]
        health = "/v2/health/ready"
    else:
        backend = "onnxruntime" if "onnxruntime" in kind else "tensorflow"
        cmd = [PY, os.path.join(ROOT, "bench/py_model_server.py"), "--backend", backend, "--version-dir",
               os.path.join(models, name, "1"), "--port", str(port)]
        health = "/"
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: ready(port, health), 120, 0.1)
    return p


def serving(a, d):
    models = os.path.join(d, "models")
    inputs = build_models(models)
    kinds = ["Capstan (tract)", "Python + onnxruntime", "Python + TensorFlow"]
    results, answers = {}, {}
    for _ in range(a.rounds):
        for name in ["dense", "cnn"]:
            body = json.dumps({"instances": inputs[name]})
            for kind in kinds:
                port = free_port()
                p = start(kind, a.bin, models, name, port)
                url = f"http://127.0.0.1:{port}/v1/models/{name}:predict"
                # Every server must answer the request the load sends, with the same prediction.
                req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    got = json.load(r)["predictions"]
                first = answers.setdefault(name, got)
                assert all(abs(x - y) < 1e-3 for x, y in zip(flat(got), flat(first))), (kind, got, first)
                script = post_script(body, d)
                wrk(url, 2, a.conns, script=script)  # warm-up
                results.setdefault((name, kind), []).append(wrk(url, a.seconds, a.conns, script=script))
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
    print(f"Predict, one instance per request (row format), wrk -t2 -c{a.conns}, medians of {a.rounds} interleaved "
          f"rounds of {a.seconds} s; every server on the same 2 cores as wrk:")
    print()
    print("| model | server | req/s | p50 | p99 | Capstan's req/s ÷ this | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, label in [("dense", "dense 16→64→64→1"), ("cnn", "CNN 28×28, 2 conv")]:
        ours = statistics.median(r["rps"] for r in results[(name, kinds[0])])
        for kind in kinds:
            rs = sorted(results[(name, kind)], key=lambda r: r["rps"])
            m = rs[len(rs) // 2]
            ratio = "—" if kind == kinds[0] else f"{ours / m['rps']:.1f}×"
            print(f"| {label} | {kind} | {m['rps']:.0f} | {m['p50_ms']:.2f} ms | {m['p99_ms']:.2f} ms | {ratio} | "
                  f"{sum(r['errors'] for r in rs)} |")
    print()


def training(a, d):
    """The same two-worker MultiWorkerMirroredStrategy job: as a TrainingJob, and as two processes started by hand
    with TF_CONFIG written out."""
    train = os.path.join(ROOT, "examples/training/train.py")
    args = ["--strategy", "mwms", "--epochs", "4", "--steps", "20"]
    by_hand, capstan = [], []
    for _ in range(a.rounds):
        work = tempfile.mkdtemp(prefix="bench-train-", dir=d)
        ports = [free_port(), free_port()]
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        t0 = time.monotonic()
        procs = [subprocess.Popen([PY, train] + args, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=dict(os.environ, TRAINING_DIR=work, TF_CONFIG=json.dumps(
                                      {"cluster": cluster, "task": {"type": "worker", "index": i}})))
                 for i in range(2)]
        codes = [p.wait(timeout=600) for p in procs]
        by_hand.append(time.monotonic() - t0)
        assert codes == [0, 0], codes

        data = tempfile.mkdtemp(prefix="bench-capstan-", dir=d)
        manifest = os.path.join(data, "job.yaml")
        with open(manifest, "w") as f:
            f.write("apiVersion: capstan.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: bench}\nspec:\n"
                    "  replicaSpecs:\n    Worker:\n      replicas: 2\n      run:\n"
                    f"        command: {json.dumps([PY, train] + args)}\n")
        port = free_port()
        env = dict(os.environ, CAPSTAN_DATA=os.path.join(data, "state"), CAPSTAN_LOG="warn")
        t0 = time.monotonic()
        up = subprocess.Popen([f"{a.bin}/capstan", "up", manifest, "--listen", f"127.0.0.1:{port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def done():
            out = subprocess.run([f"{a.bin}/capstan", "get", "trainingjob", "bench", "-o", "json"], env=env,
                                 capture_output=True, text=True).stdout
            try:
                conds = json.loads(out)["status"]["conditions"]
            except Exception:
                return False
            return any(c["type"] in ("Succeeded", "Failed") and c["status"] == "True" for c in conds)
        wait_until(done, 600, 0.05)
        capstan.append(time.monotonic() - t0)
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    h, c = statistics.median(by_hand), statistics.median(capstan)
    print(f"Training orchestration: the same MultiWorkerMirroredStrategy job (2 workers, 4 epochs), medians of "
          f"{a.rounds} runs:")
    print()
    print("| launched | wall time (median) | all runs |")
    print("|---|---|---|")
    print(f"| by hand: two processes with TF_CONFIG written out | {h:.2f} s | {', '.join(f'{x:.2f}' for x in by_hand)} |")
    print(f"| `capstan up job.yaml`: start, TF_CONFIG, supervision, Succeeded | {c:.2f} s | "
          f"{', '.join(f'{x:.2f}' for x in capstan)} |")
    print()
    print(f"Capstan's overhead: {c - h:+.2f} s ({(c / h - 1) * 100:+.0f} %), including its own start and the "
          f"status polling that notices success.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=16)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-serving-")
    try:
        serving(a, d)
        training(a, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
