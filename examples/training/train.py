"""A small Keras model trained across the tasks Capstan starts, with the strategy TF_CONFIG calls for.

    python train.py --strategy mwms   # MultiWorkerMirroredStrategy: every worker trains (all-reduce)
    python train.py --strategy ps     # ParameterServerStrategy: the chief coordinates, workers and ps serve

Capstan gives every task TF_CONFIG (the cluster and this task's place in it) and TRAINING_DIR (shared by all tasks).
The model learns y = 3*x0 - 2*x1 + 0.5 from synthetic data; the chief (worker 0 for MWMS) saves it as a SavedModel
in <export dir>/<name>/<version>/ ($TRAINING_DIR/models by default), exports it next to it as model.onnx (tf2onnx) for a ModelServer, and
writes the final loss to $TRAINING_DIR/result.json.
With BackupAndRestore (MWMS), a group restarted after a lost worker resumes from the last finished epoch.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

TRAINING_DIR = os.environ.get("TRAINING_DIR", "/tmp/capstan-training")


def log(*a):
    print(*a, flush=True)


def make_data(n=4096, seed=7):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 2)).astype("float32")
    y = (3 * x[:, 0] - 2 * x[:, 1] + 0.5).astype("float32").reshape(-1, 1)
    return x, y


def build_model():
    model = tf.keras.Sequential([
        tf.keras.layers.Input(shape=(2,), name="x"),
        tf.keras.layers.Dense(16, activation="relu"),
        tf.keras.layers.Dense(1, name="y"),
    ])
    return model


class Progress(tf.keras.callbacks.Callback):
    """Writes each finished epoch to $TRAINING_DIR/progress-<task>.json and sleeps a little, so tests can act
    mid-training; records the epoch training (re)started from."""

    def __init__(self, task, pause):
        super().__init__()
        self.task, self.pause, self.first = task, pause, None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first is None:
            self.first = epoch
            with open(os.path.join(TRAINING_DIR, f"started-{self.task}-attempt{os.environ.get('CAPSTAN_TRAINING_ATTEMPT', '0')}.json"), "w") as f:
                json.dump({"epoch": epoch}, f)

    def on_epoch_end(self, epoch, logs=None):
        with open(os.path.join(TRAINING_DIR, f"progress-{self.task}.json"), "w") as f:
            json.dump({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", 0))}, f)
        log(f"{self.task}: epoch {epoch + 1} loss {float((logs or {}).get('loss', 0)):.4f}")
        time.sleep(self.pause)


def save(model, args, is_chief, task):
    # Every worker must call save under MWMS (it is a collective); only the chief's copy is kept.
    target = os.path.join(args.export_dir or os.path.join(TRAINING_DIR, "models"), args.model, str(args.version))
    path = target if is_chief else os.path.join(TRAINING_DIR, "scratch", task)
    model.save(path)
    if is_chief:
        log(f"saved {target}")
        export_onnx(target)


def export_onnx(saved_model):
    """Converts the SavedModel to <dir>/model.onnx with tf2onnx, in a process of its own (no strategy, no
    collectives), through a temporary file renamed into place so a model server never reads half a file."""
    import subprocess
    tmp = os.path.join(saved_model, "model.onnx.tmp")
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved_model, "--output", tmp,
                    "--opset", "13"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.replace(tmp, os.path.join(saved_model, "model.onnx"))
    log(f"exported {saved_model}/model.onnx")


def mwms(args):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver = strategy.cluster_resolver
    task = f"{resolver.task_type}-{resolver.task_id}" if resolver.task_type else "worker-0"
    is_chief = resolver.task_type in (None, "chief") or (resolver.task_type == "worker" and resolver.task_id == 0)
    x, y = make_data()
    global_batch = 64 * strategy.num_replicas_in_sync
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(4096, seed=1).repeat().batch(global_batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
    with strategy.scope():
        model = build_model()
        model.compile(optimizer=tf.keras.optimizers.Adam(0.02), loss="mse")
    callbacks = [tf.keras.callbacks.BackupAndRestore(backup_dir=os.path.join(TRAINING_DIR, "backup")),
                 Progress(task, args.pause)]
    hist = model.fit(ds, epochs=args.epochs, steps_per_epoch=args.steps, callbacks=callbacks, verbose=0)
    save(model, args, is_chief, task)
    if is_chief:
        write_result(model, hist, strategy.num_replicas_in_sync)


def ps(args):
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type in ("worker", "ps"):
        log(f"{resolver.task_type}-{resolver.task_id}: serving")
        server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                      task_index=resolver.task_id, protocol=resolver.rpc_layer or "grpc", start=True)
        server.join()
        return
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    x, y = make_data()

    def dataset_fn(input_context):
        batch = input_context.get_per_replica_batch_size(64)
        d = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(4096, seed=1).repeat().batch(batch)
        return d.shard(input_context.num_input_pipelines, input_context.input_pipeline_id).prefetch(2)

    with strategy.scope():
        model = build_model()
        model.compile(optimizer=tf.keras.optimizers.Adam(0.02), loss="mse", steps_per_execution=10)
    hist = model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn), epochs=args.epochs,
                     steps_per_epoch=args.steps, callbacks=[Progress("chief-0", args.pause)], verbose=0)
    save(model, args, True, "chief-0")
    write_result(model, hist, len(resolver.cluster_spec().as_dict().get("worker", [])))


def write_result(model, hist, replicas):
    probe = np.array([[0.5, -0.25], [-1.0, 1.0], [0.0, 0.0]], dtype="float32")
    want = 3 * probe[:, 0] - 2 * probe[:, 1] + 0.5
    # A forward pass in NumPy from the trained weights: model.predict would be one more collective under MWMS,
    # which the other workers, already done, would never join.
    w1, b1, w2, b2 = model.get_weights()
    got = (np.maximum(probe @ w1 + b1, 0) @ w2 + b2).reshape(-1)
    with open(os.path.join(TRAINING_DIR, "result.json"), "w") as f:
        json.dump({"loss": float(hist.history["loss"][-1]), "replicas": replicas,
                   "probe": probe.tolist(), "want": want.tolist(), "got": got.tolist()}, f)
    log(f"final loss {hist.history['loss'][-1]:.4f}; predictions {got.round(3).tolist()} for {want.tolist()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", choices=["mwms", "ps"], required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds to sleep after each epoch")
    ap.add_argument("--model", default="linear")
    ap.add_argument("--version", type=int, default=1)
    ap.add_argument("--export-dir", default=None,
                    help="where models/<name>/<version>/ goes (relative to the working directory); "
                         "default $TRAINING_DIR/models")
    args = ap.parse_args()
    os.makedirs(TRAINING_DIR, exist_ok=True)
    log(f"TF_CONFIG={os.environ.get('TF_CONFIG', '')}")
    (mwms if args.strategy == "mwms" else ps)(args)


if __name__ == "__main__":
    sys.exit(main())
