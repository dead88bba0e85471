"""The benchmarks' bundle (`make bench-bundle`; `make bench-onnx`, `bench-serve` and `bench-ab` use it):
MobileNetV3-Large 1.0 at 224 x 224 with random weights, whose reduced-precision variants are recorded
so that the service can run them.

The weights do not change the time, but a variant is only recorded by `mbv3 quantize` after it has
scored float32 and the variant on held-out data of the bundle's classes. So the bundle has the 11
outputs of scikit-learn's digits (10 digits and the background class), and the digits, written at
224 x 224 and built into TFRecords beside it, are what bf16 and int8 are validated and calibrated on.
The weights are random: the top-1 is chance and the drop is noise, so the variants are recorded with
--force. This bundle says how fast each precision runs, never how accurate it is.

Made in steps, each skipped when its output is there; a precision that `mbv3 quantize` cannot make
(an mbv3 without it, a CPU that refuses it) is skipped with the reason printed, and the float32
benchmarks run without it. A bundle made otherwise (no stamp file) is used as it is."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

PRECISIONS = ("bf16", "int8")   # the variants the benchmarks ask `mbv3 quantize` for, in this order
CLASSES = 11                    # the digits and the background class
SIZE = 224
STAMP = "bench-bundle.json"     # in the bundle: made here, with this recipe


class BundleError(RuntimeError):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _run(cmd, what, quiet=False):
    log("+ " + " ".join(cmd))
    if subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None).returncode != 0:
        raise BundleError("%s failed: %s" % (what, " ".join(cmd)))


def paths(bundle_dir):
    """(work folder, digits image folder, TFRecord folder, checkpoint): beside the bundle."""
    work = os.path.dirname(os.path.abspath(bundle_dir))
    return work, os.path.join(work, "digits-224", "images"), os.path.join(work, "digits-224", "data"), \
        os.path.join(work, "ckpt")


def recorded(bundle_dir):
    """{precision: [engines]} of the bundle's current variant records, an int8 one only on the files
    `mbv3 quantize` makes now (a bundle quantized before OpenVINO had its own IR is quantized again)."""
    from mbv3 import bundle, precision
    info = bundle.load(bundle_dir).info
    out = {}
    for v in info.variants or ():
        if info.variant(v.precision, v.engine) is not None and (
                v.precision != "int8" or v.file == precision.int8_files(v.engine)[0]):
            out.setdefault(v.precision, []).append(v.engine)
    return out


def ensure(bundle_dir, precisions=PRECISIONS, python=sys.executable):
    """Make what is missing of the bench bundle at `bundle_dir`; returns {precision: why it was not
    recorded} for the precisions it could not add (empty when all are there)."""
    mbv3 = [python, "-m", "mbv3.cli"]
    model_json = os.path.join(bundle_dir, "model.json")
    stamp = os.path.join(bundle_dir, STAMP)
    if os.path.isfile(model_json) and not os.path.isfile(stamp):
        log("bench bundle: %s was not made by bench_bundle.py (no %s): used as it is, with the variants it "
            "records; remove it to make the bench bundle with variants" % (bundle_dir, STAMP))
        return {}
    work, images, data, ckpt = paths(bundle_dir)
    if not os.path.isfile(os.path.join(data, "dataset.json")):
        shutil.rmtree(os.path.dirname(images), ignore_errors=True)
        log("bench bundle: writing scikit-learn's digits at %d x %d into %s ..." % (SIZE, SIZE, images))
        from mbv3 import digits
        digits.write_digits_folder(images, size=SIZE)
        _run(mbv3 + ["data", "build", "--images", images, "--output", data, "--val-split", "0.2"], "the digits data set",
             quiet=True)
    if not os.path.isfile(model_json):
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(bundle_dir, ignore_errors=True)
        _run(mbv3 + ["init", "--model-dir", ckpt, "--num-classes", str(CLASSES)], "the random checkpoint")
        _run(mbv3 + ["export", "--checkpoint", ckpt, "--output", bundle_dir, "--image-size", str(SIZE)], "the export")
        with open(stamp, "w") as f:
            json.dump({"made_by": "services/classifier/benchmarks/bench_bundle.py", "classes": CLASSES, "size": SIZE,
                       "weights": "random (mbv3 init): speed only, the accuracy is chance"}, f, indent=2)
    skipped = {}
    from mbv3.precision import RUNS_ON
    for precision in precisions:
        if set(recorded(bundle_dir).get(precision, ())) >= set(RUNS_ON[precision]):   # on every engine that runs it
            continue
        cmd = mbv3 + ["quantize", "--bundle", bundle_dir, "--precision", precision, "--data", data, "--force"]
        log("+ " + " ".join(cmd))
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0 or precision not in recorded(bundle_dir):
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            skipped[precision] = lines[-1] if lines else "exit status %d" % done.returncode
            log("bench bundle: no %s variant (%s); the benchmarks run without it" % (precision, skipped[precision]))
    return skipped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="build/bench/bundle")
    p.add_argument("--precisions", nargs="*", default=list(PRECISIONS), choices=list(PRECISIONS),
                   help="the variants to record (none: float32 only)")
    args = p.parse_args(argv)
    try:
        ensure(args.bundle, args.precisions)
    except BundleError as e:
        print("bench_bundle: error: %s" % e, file=sys.stderr)
        return 1
    have = recorded(args.bundle)
    log("bench bundle %s: float32%s (random weights: the speed is what it is for, the accuracy is chance)"
        % (args.bundle, "".join(", %s on %s" % (p, " and ".join(have[p])) for p in sorted(have))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
