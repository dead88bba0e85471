"""Inference latency of a bundle: ONNX Runtime next to TensorFlow running the same frozen graph.

Both run in this process on the same random batches; the TensorFlow figure is the reference the
ONNX Runtime one is reported against, so the ratio means something on any machine.
"""
import time

import numpy as np

from . import bundle
from . import onnx_classifier


def _time(fn, warmup, min_runs, min_seconds):
    for _ in range(warmup):
        fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    ms = np.asarray(samples) * 1000
    return {"runs": len(samples), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean())}


def run(bundle_dir, batches=(1, 8), threads=0, warmup=3, min_runs=20, min_seconds=3.0, reference=True, log=print):
    clf = onnx_classifier.OnnxClassifier(bundle_dir, threads)
    h, w = clf.size
    results = {"bundle": clf.bundle.path, "model": clf.bundle.name, "threads": threads or "ort-default",
               "batches": []}
    session = None
    if reference:
        import tensorflow as tf
        from .export import INPUT, OUTPUT
        graph_def = tf.compat.v1.GraphDef()
        with open(clf.bundle.file(bundle.FROZEN), "rb") as f:
            graph_def.ParseFromString(f.read())
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        config = tf.compat.v1.ConfigProto()
        if threads:
            config.intra_op_parallelism_threads = threads
        session = tf.compat.v1.Session(graph=graph, config=config)
    rng = np.random.default_rng(0)
    try:
        for n in batches:
            batch = rng.uniform(-1, 1, (n, h, w, 3)).astype(np.float32)
            row = {"batch": n, "onnxruntime": _time(lambda: clf.logits(batch), warmup, min_runs, min_seconds)}
            row["onnxruntime"]["images_per_s"] = n * 1000 / row["onnxruntime"]["p50_ms"]
            line = "batch %3d  onnxruntime p50 %7.2f ms  p90 %7.2f ms  %7.1f img/s" % (
                n, row["onnxruntime"]["p50_ms"], row["onnxruntime"]["p90_ms"], row["onnxruntime"]["images_per_s"])
            if session is not None:
                feed = {INPUT + ":0": batch}
                ref = _time(lambda: session.run(OUTPUT + ":0", feed), warmup, min_runs, min_seconds)
                row["tensorflow"] = ref
                row["speedup_vs_tensorflow"] = ref["p50_ms"] / row["onnxruntime"]["p50_ms"]
                line += "  | tensorflow p50 %7.2f ms  -> onnxruntime %.2fx faster" % (
                    ref["p50_ms"], row["speedup_vs_tensorflow"])
            log(line)
            results["batches"].append(row)
    finally:
        if session is not None:
            session.close()
    return results
