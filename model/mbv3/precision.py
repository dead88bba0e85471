"""`mbv3 quantize --precision bf16`: measure what bfloat16 costs a bundle before a server may use it.

OpenVINO's CPU plugin runs a model in bfloat16 when INFERENCE_PRECISION_HINT says so (and, on CPUs
with AVX512_BF16 or AMX, by default): several times faster at batch 8, with logits a few percent off
float32's. Whether that changes answers depends on the model, so it is measured per bundle: the
bundle's model.onnx is compiled twice, with the hint at f32 and at bf16, and both score the same
held-out split, read and preprocessed as `mbv3 eval --bundle` reads it (mbv3.bundle_eval: the
serving path's decode and transform). The result is a bundle.PrecisionVariant in the bundle's
model.json (atomically, mbv3.fileio), which the service's OpenVINO backend reads; a variant whose
top-1 drops by more than the threshold, or measured on a CPU without native bfloat16 (where the
plugin would not run bf16 at all), is refused unless forced. INT8 will write the same record with
a model file of its own.
"""
import datetime
import os
import time

import numpy as np

from . import bundle, bundle_eval, classify, data, onnx_classifier, scoring
from .console import format_duration, say
from .errors import MbV3Error, first_line

ENGINE = "openvino"
DEVICE = "CPU"
# the capability OpenVINO's CPU plugin lists in OPTIMIZATION_CAPABILITIES when the CPU has native bfloat16
NATIVE = {"bf16": "BF16", "int8": "INT8"}
INT8_FILE = "model-int8.onnx"            # the quantized model an int8 variant runs, in the bundle
HINTS = {"bf16": "bf16", "f32": "f32"}   # INFERENCE_PRECISION_HINT's values
DEFAULT_MAX_TOP1_DROP = 0.5              # points of top-1 bf16 may lose against float32
DEFAULT_BATCH = 32
PROGRESS_SECONDS = 10.0


def openvino_config(precision, threads):
    """The CPU plugin's compile configuration for `precision` ("f32", "bf16"): the one `mbv3 quantize`
    validates with and the service runs with, so what was measured is what serves."""
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "INFERENCE_PRECISION_HINT": HINTS.get(precision, HINTS["f32"])}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def type_name(value):
    """An OpenVINO element type as the hint spells it ("bf16", "f32"); strings pass through."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class _Compiled(object):
    """The bundle's model.onnx compiled by OpenVINO's CPU plugin with one precision hint."""

    def __init__(self, core, model, precision, threads):
        self.compiled = core.compile_model(model, DEVICE, openvino_config(precision, threads))
        self.runs_as = type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.request = self.compiled.create_infer_request()

    def logits(self, batch):
        return np.array(self.request.infer({0: np.ascontiguousarray(batch, np.float32)})[0], np.float32)


def check_arguments(bundle_dir, data_dir, split, precision, max_top1_drop):
    """What can be checked without TensorFlow or OpenVINO: the bundle, the data set, its split and
    the flags. Returns (loaded bundle, split name, Split record)."""
    if precision not in NATIVE:
        raise MbV3Error("--precision %s: only %s is measured here (INT8 is not built yet)"
                        % (precision, ", ".join(sorted(NATIVE))))
    if max_top1_drop < 0:
        raise MbV3Error("--max-top1-drop must not be negative, got %s" % max_top1_drop)
    loaded = bundle.load(bundle_dir)
    meta = data.load(data_dir)
    if loaded.num_classes != meta.num_classes:
        raise MbV3Error("bundle has %d classes, data set %s has %d" % (loaded.num_classes, data_dir, meta.num_classes))
    name, record = meta.split(split, data_dir)
    if not record.written:
        raise MbV3Error("no %s examples in %s" % (name, data_dir))
    return loaded, name, record


def measure(bundle_dir, data_dir, precision="bf16", split="validation", max_top1_drop=DEFAULT_MAX_TOP1_DROP,
            force=False, batch_size=DEFAULT_BATCH, threads=0, workers=None, capabilities=None, write=True,
            progress_seconds=PROGRESS_SECONDS, log=say):
    """Score float32 and `precision` over the split, refuse or record the variant; returns it.
    capabilities: OpenVINO's OPTIMIZATION_CAPABILITIES for the CPU (None: asked of OpenVINO)."""
    loaded, split, record = check_arguments(bundle_dir, data_dir, split, precision, max_top1_drop)
    loaded = onnx_classifier.verify_bundle(loaded.path)   # sha256s and shapes, as a server checks
    info = loaded.info
    try:
        import openvino as ov
    except ImportError as e:
        raise MbV3Error("mbv3 quantize needs the openvino package (%s)" % e)
    core = ov.Core()
    if capabilities is None:
        capabilities = core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    native = NATIVE[precision] in capabilities
    device_name = str(core.get_property(DEVICE, "FULL_DEVICE_NAME"))
    if not native and not force:
        raise MbV3Error("this CPU (%s) has no native %s (OpenVINO's OPTIMIZATION_CAPABILITIES: %s): the plugin "
                        "would not run it, so there is nothing to validate (--force records it anyway)"
                        % (device_name, precision, ", ".join(capabilities)))
    model_path = loaded.file(bundle.ONNX)
    try:
        model = core.read_model(model_path)
        reference = _Compiled(core, model, "f32", threads)
        reduced = _Compiled(core, model, precision, threads)
    except Exception as e:   # OpenVINO raises RuntimeError and its own subclasses for a bad model
        raise MbV3Error("openvino cannot load %s: %s" % (model_path, first_line(e)))
    version = ov.__version__.split("-")[0]
    files = data.shard_files(data_dir, record)
    expected = int(record.written)
    log("%s: %s v%s on OpenVINO %s (%s): float32 vs %s (the plugin reads back %s) over %d %s images of %s"
        % (loaded.path, info.name, info.version, version, device_name, precision, reduced.runs_as, expected,
           split, os.path.abspath(data_dir)))

    tallies = {"f32": scoring.Tally(), precision: scoring.Tally()}
    agree = 0
    skipped = 0
    start = last = time.time()

    for prepared in bundle_eval.prepared_batches(files, info.preprocessing, batch_size, workers, log):
        usable = [p for p in prepared if p is not None]
        skipped += len(prepared) - len(usable)
        if usable:
            batch = np.stack([image for image, _ in usable])
            labels = np.array([label for _, label in usable])
            best = {}
            for key, engine in (("f32", reference), (precision, reduced)):
                best[key] = classify.top_k_indices(engine.logits(batch), scoring.TOP_K)
                tallies[key].add(best[key], labels)
            agree += int((best["f32"][:, 0] == best[precision][:, 0]).sum())
        now = time.time()
        if now - last >= progress_seconds:
            last = now
            seen = tallies["f32"].seen
            rate = seen / max(now - start, 1e-9)
            log("quantize: %d/%d images (%.1f%%), %.1f img/s in both precisions, ETA %s" % (
                seen, expected, 100.0 * seen / expected, rate,
                format_duration((expected - seen - skipped) / rate) if rate > 0 else "?"))
    tallies["f32"].check(expected, skipped, log)
    seen = tallies["f32"].seen
    if not seen:
        raise MbV3Error("no usable %s example in %s (%d records skipped)" % (split, data_dir, skipped))

    f32, low = tallies["f32"].fields(expected, skipped, 0), tallies[precision].fields(expected, skipped, 0)
    drop = round(100.0 * (f32["top1"] - low["top1"]), 4)
    variant = bundle.PrecisionVariant(
        precision=precision, engine=ENGINE, engine_version=version, device=DEVICE, device_name=device_name,
        model_sha256=info.files[bundle.ONNX].sha256, data=os.path.abspath(data_dir), split=split, examples=seen,
        float32=bundle.Accuracy(top1=f32["top1"], top5=f32["top5"]),
        reduced=bundle.Accuracy(top1=low["top1"], top5=low["top5"]),
        top1_agreement=agree / float(seen), max_top1_drop=float(max_top1_drop), top1_drop=drop,
        forced=bool(force and (drop > max_top1_drop or not native)), native=native,
        validated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        skipped_records=skipped)
    log("float32 top-1 %.4f top-5 %.4f; %s top-1 %.4f top-5 %.4f; top-1 drop %.2f points (at most %s); "
        "top-1 agreement %.4f over %d images in %s"
        % (f32["top1"], f32["top5"], precision, low["top1"], low["top5"], drop, max_top1_drop,
           variant.top1_agreement, seen, format_duration(time.time() - start)))
    if drop > max_top1_drop and not force:
        raise MbV3Error("%s loses %.2f points of top-1 on %d %s images (float32 %.4f, %s %.4f), more than "
                        "--max-top1-drop %s; nothing recorded (--force records it anyway)"
                        % (precision, drop, seen, split, f32["top1"], precision, low["top1"], max_top1_drop))
    if write:
        info.record_variant(variant)
        loaded.save_info()
        log("recorded %s in %s%s" % (precision, loaded.file(bundle.METADATA),
                                     " (forced)" if variant.forced else ""))
    return variant


def as_json(variant):
    """The variant as model.json holds it (what the command prints)."""
    return bundle.to_plain(variant)
