"""`make bench-shapes`: what the OpenVINO backend's static full-batch model buys and costs.

The backend compiles the bundle's model for the micro-batches three ways (backends/openvino.py):
static batch 1, static MAX_BATCH and a dynamic batch. This times, per precision the bundle records
for OpenVINO (and float32), a batch of 8 through the dynamic-shape model and through the static
one, in interleaved rounds of `--seconds` each (the order turned every round), with the compile
configuration the service uses (mbv3.precision.openvino_config, 2 threads), and reports the median
images/s, the range, static / dynamic and each precision / float32 on the static model. It also
reports the resident memory one more compiled static model adds to this process (what a worker
pays for it). Nothing else should run meanwhile; check `uptime` first.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from serve_bench import ensure_bundle, memory_mb, model_file

BATCH = 8
THREADS = 2


def rss_mb():
    return memory_mb(os.getpid())["rss_mb"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="build/bench/bundle")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="timed per model and round")
    p.add_argument("--json", default="build/bench/shapes.json")
    args = p.parse_args(argv)

    import openvino as ov
    from mbv3 import bundle
    from mbv3 import precision as mp
    bundle_dir, _ = ensure_bundle(args.bundle)
    loaded = bundle.load(bundle_dir)
    shape = [loaded.preprocessing.height, loaded.preprocessing.width, 3]
    precisions = ["f32"] + [name for name in bundle.PRECISIONS if loaded.info.model_file(name, "openvino")]
    core = ov.Core()
    requests, added_mb = {}, {}
    for precision in precisions:
        config = mp.openvino_config(precision, THREADS)
        model = core.read_model(model_file(loaded, precision))
        requests[(precision, "dynamic")] = core.compile_model(model, "CPU", config).create_infer_request()
        before = rss_mb()
        model.reshape([BATCH] + shape)
        requests[(precision, "static")] = core.compile_model(model, "CPU", config).create_infer_request()
        added_mb[precision] = rss_mb() - before
    x = np.random.default_rng(0).uniform(-1, 1, [BATCH] + shape).astype(np.float32)
    rates = {key: [] for key in requests}
    keys = list(requests)
    for r in range(args.rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            request = requests[key]
            for _ in range(2):
                request.infer({0: x})
            start, runs = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                request.infer({0: x})
                runs += 1
            rates[key].append(runs * BATCH / (time.perf_counter() - start))
    median = {key: float(np.median(v)) for key, v in rates.items()}
    print("%s, batch %d, %d threads, %d rounds of %.1f s, load average %s" % (
        loaded.path, BATCH, THREADS, args.rounds, args.seconds, " ".join("%.2f" % a for a in os.getloadavg())))
    print("%-6s %-8s %10s %18s %16s %14s" % ("", "shape", "images/s", "range", "static/dynamic", "/ f32 static"))
    for precision in precisions:
        for kind in ("dynamic", "static"):
            key = (precision, kind)
            print("%-6s %-8s %10.1f %8.1f-%-9.1f %16s %14s" % (
                precision, kind, median[key], min(rates[key]), max(rates[key]),
                "%.2f" % (median[key] / median[(precision, "dynamic")]) if kind == "static" else "",
                "%.2f" % (median[key] / median[("f32", "static")]) if kind == "static" else ""))
        print("%-6s memory one more static model adds: %.0f MB" % (precision, added_mb[precision]))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"bundle": loaded.path, "batch": BATCH, "threads": THREADS, "load_average": os.getloadavg(),
                   "images_per_s": {"%s/%s" % key: v for key, v in rates.items()}, "added_rss_mb": added_mb}, f,
                  indent=2)
    print("wrote %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
