#!/usr/bin/env python3
"""The benchmark's peer: a Python HTTP server answering TF Serving's :predict (row format) for one model, with
onnxruntime or with TensorFlow. Threaded, as a simple production Python server would be."""

import argparse
import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["onnxruntime", "tensorflow"], required=True)
    ap.add_argument("--version-dir", required=True, help="holds model.onnx and the SavedModel")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    if a.backend == "onnxruntime":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(os.path.join(a.version_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x):
            return sess.run(None, {name: x})[0]
    else:
        import tensorflow as tf
        model = tf.keras.models.load_model(a.version_dir)

        @tf.function(reduce_retracing=True)
        def infer(x):
            return model(x, training=False)

        def run(x):
            return infer(tf.constant(x)).numpy()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # Without TCP_NODELAY, headers and body leave as two segments and the client's delayed ACK adds 40 ms
            # to every keep-alive request: every real Python server sets it, so this one does too.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):
            pass

        def do_POST(self):
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                x = np.asarray(body["instances"], dtype=np.float32)
                out = json.dumps({"predictions": run(x).tolist()}).encode()
                code = 200
            except Exception as e:  # the error shape TF Serving uses
                out, code = json.dumps({"error": str(e)}).encode(), 400
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_GET(self):
            out = b'{"ready": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", a.port), Handler).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
