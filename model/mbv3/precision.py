"""`mbv3 quantize`: measure what a reduced precision costs a bundle before a server may use it.

bf16: OpenVINO's CPU plugin runs a model in bfloat16 when INFERENCE_PRECISION_HINT says so (and, on
CPUs with AVX512_BF16 or AMX, by default): several times faster at batch 8, with logits a few percent
off float32's. int8: NNCF's post-training quantization turns model.onnx into a model of its own per
engine, calibrated on a few hundred of the run's own images (mbv3.calibration): an OpenVINO IR
(model-int8.xml and .bin, quantized on NNCF's OpenVINO backend, where the CPU plugin fuses it best)
and a QDQ model-int8.onnx for ONNX Runtime. Whether either changes answers depends on the model, so
it is measured per bundle and per engine: float32 and the reduced precision score the same held-out
split, read and preprocessed as `mbv3 eval --bundle` reads it (mbv3.bundle_eval: the serving path's
decode and transform), and their model-only speed is timed at batch 8 with the same threads. The
result is one bundle.PrecisionVariant per engine in the bundle's model.json (atomically,
mbv3.fileio), which the service reads; a variant whose top-1 drops by more than the threshold, or
measured on a CPU without native support, is refused unless forced, and an int8 file no variant
speaks for is not kept.
"""
import datetime
import os
import shutil
import tempfile
import time

import numpy as np

from . import bundle, bundle_eval, classify, data, fileio, onnx_classifier, scoring
from .calibration import (DEFAULT_CALIBRATION_SIZE, DEFAULT_CALIBRATION_SPLIT, MAX_CALIBRATION, MIN_CALIBRATION,
                          CalibrationSource, calibration_inputs, list_images, quantize_onnx, quantize_openvino)
from .console import format_duration, say
from .errors import MbV3Error, first_line

OPENVINO, ONNXRUNTIME = "openvino", onnx_classifier.ENGINE
ENGINES = (OPENVINO, ONNXRUNTIME)
ENGINE = OPENVINO                        # where bf16 is measured (an OpenVINO hint)
DEVICE = "CPU"
# the capability OpenVINO's CPU plugin lists in OPTIMIZATION_CAPABILITIES when the CPU runs the precision natively
NATIVE = {"bf16": "BF16", "int8": "INT8"}
HINTS = {"bf16": "bf16", "f32": "f32"}   # INFERENCE_PRECISION_HINT's values; int8 runs its own file with f32's
INT8_FILE = "model-int8.onnx"           # ONNX Runtime's int8 model (QDQ)
INT8_IR, INT8_IR_WEIGHTS = "model-int8.xml", "model-int8.bin"   # OpenVINO's (an IR: graph and weights)
DEFAULT_MAX_TOP1_DROP = {"bf16": 0.5, "int8": 1.0}   # points of top-1 a variant may lose against float32
# the engines that run each reduced precision (bf16 is an OpenVINO hint; int8 has a file per engine):
# what quantize measures on by default and what the service's PRECISION may take on each backend
RUNS_ON = {"bf16": (OPENVINO,), "int8": ENGINES}
DEFAULT_BATCH = 32
SPEED_BATCH = 8                          # the service's micro-batch: what PRECISION=auto ranks by
SPEED_SECONDS = 2.0                      # timed per model, in rounds alternating float32 and the variant
SPEED_ROUNDS = 4
SPEED_WARMUP = 3
PROGRESS_SECONDS = 10.0


def threshold_for(precision, given=None):
    """The threshold: the one given, else the precision's default."""
    return DEFAULT_MAX_TOP1_DROP[precision] if given is None else float(given)


def openvino_config(precision, threads, pinned=True):
    """The CPU plugin's compile configuration for `precision` ("f32", "bf16", "int8"): the one `mbv3
    quantize` validates with and the service runs with, so what was measured is what serves. int8 is
    its own model file, compiled with the f32 hint (only its quantized operations run in int8).
    pinned=False turns off the plugin's CPU pinning, which pins every compiled model's threads from
    the first core on: two one-thread models (two workers) would share one core."""
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "INFERENCE_PRECISION_HINT": HINTS.get(precision, HINTS["f32"])}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if not pinned:
        config["ENABLE_CPU_PINNING"] = False
    return config


def type_name(value):
    """An OpenVINO element type as the hint spells it ("bf16", "f32"); strings pass through."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class _Compiled(object):
    """A model compiled by OpenVINO's CPU plugin with one precision's configuration."""

    def __init__(self, core, model, precision, threads):
        self.precision = precision
        self.compiled = core.compile_model(model, DEVICE, openvino_config(precision, threads))
        self.runs_as = type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.request = self.compiled.create_infer_request()

    def logits(self, batch):
        return np.array(self.request.infer({0: np.ascontiguousarray(batch, np.float32)})[0], np.float32)


class _Session(object):
    """A model in ONNX Runtime's CPU provider, checked against model.json's shapes as a server checks."""

    def __init__(self, path, info, precision, threads):
        self.precision = precision
        self.session = onnx_classifier.onnx_session(path, threads)
        onnx_classifier.check_session(self.session, info, path)
        self.input_name, self.output_name = info.input.name, info.output.name

    def logits(self, batch):
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]


def images_per_second(pair, batch, seconds=SPEED_SECONDS, rounds=SPEED_ROUNDS, warmup=SPEED_WARMUP):
    """Model-only images/s of each runner in `pair` (float32's, the variant's) on one preprocessed
    batch: a few warm runs, then `rounds` alternating timed rounds of seconds/rounds each, so a change
    of machine load falls on both."""
    for runner in pair:
        for _ in range(warmup):
            runner.logits(batch)
    runs, spent = [0] * len(pair), [0.0] * len(pair)
    for _ in range(rounds):
        for i, runner in enumerate(pair):
            start = time.perf_counter()
            while True:
                runner.logits(batch)
                runs[i] += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / rounds:
                    break
            spent[i] += elapsed
    return [round(n * len(batch) / t, 1) for n, t in zip(runs, spent)]


class Arguments(object):
    """What check_arguments resolved: the bundle, the scored split, the engines, the threshold and,
    for int8, the calibration source and the output folder."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def _tfrecord_split(data_dir, split, num_classes, what):
    meta = data.load(data_dir)
    if meta.num_classes != num_classes:
        raise MbV3Error("bundle has %d classes, %s %s has %d" % (num_classes, what, data_dir, meta.num_classes))
    name, record = meta.split(split, data_dir)
    if not record.written:
        raise MbV3Error("no %s examples in %s" % (name, data_dir))
    return name, record


def check_arguments(bundle_dir, data_dir, split, precision, max_top1_drop=None, engines=None, calibration=None,
                    calibration_split=None, calibration_size=None, output=None):
    """What can be checked without TensorFlow, OpenVINO or NNCF: the bundle, the data sets, their
    splits, the image folder's listing and the flags. Returns Arguments."""
    if precision not in NATIVE:
        raise MbV3Error("--precision %s: choose one of %s" % (precision, ", ".join(sorted(NATIVE))))
    threshold = threshold_for(precision, max_top1_drop)
    if threshold < 0:
        raise MbV3Error("--max-top1-drop must not be negative, got %s" % threshold)
    engines = tuple(dict.fromkeys(engines or RUNS_ON[precision]))
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise MbV3Error("--engines %s: choose among %s" % (" ".join(unknown), " ".join(ENGINES)))
    int8_only = [flag for flag, value in (("--calibration", calibration), ("--calibration-split", calibration_split),
                                          ("--calibration-size", calibration_size), ("--output", output))
                 if value is not None]
    if precision == "bf16":
        if int8_only:
            raise MbV3Error("%s %s to --precision int8 (bf16 is an engine setting on model.onnx: no new file, no "
                            "calibration)" % (" and ".join(int8_only), "applies" if len(int8_only) == 1 else "apply"))
        if engines != (OPENVINO,):
            raise MbV3Error("bf16 is OpenVINO's inference hint: --engines openvino only, got %s" % " ".join(engines))
    loaded = bundle.load(bundle_dir)
    name, record = _tfrecord_split(data_dir, split, loaded.num_classes, "data set")
    args = Arguments(loaded=loaded, split=name, record=record, engines=engines, max_top1_drop=threshold,
                     source=None, calibration_size=None, output=None)
    if precision != "int8":
        return args
    size = DEFAULT_CALIBRATION_SIZE if calibration_size is None else int(calibration_size)
    if not MIN_CALIBRATION <= size <= MAX_CALIBRATION:
        raise MbV3Error("--calibration-size %d: between %d and %d images" % (size, MIN_CALIBRATION, MAX_CALIBRATION))
    folder = data_dir if calibration is None else calibration
    if not os.path.isdir(folder):
        raise MbV3Error("no calibration folder at %s" % os.path.abspath(folder))
    if os.path.exists(os.path.join(folder, data.METADATA)):   # a TFRecord data set from `mbv3 data build`
        cal_name, cal_record = _tfrecord_split(folder, calibration_split or DEFAULT_CALIBRATION_SPLIT,
                                               loaded.num_classes, "calibration data set")
        if os.path.realpath(folder) == os.path.realpath(data_dir) and cal_name == name:
            raise MbV3Error("calibrating on the %s split that is scored would test the model on its own calibration "
                            "images; choose another --calibration-split (default %s)" % (name, DEFAULT_CALIBRATION_SPLIT))
        source = CalibrationSource(folder, cal_name, cal_record)
        available = int(cal_record.written)
    else:
        if calibration_split is not None:
            raise MbV3Error("--calibration-split applies to a TFRecord data set; %s is an image folder" % folder)
        source = CalibrationSource(folder, files=list_images(folder))
        available = len(source.files)
        if not available:
            raise MbV3Error("no calibration images under %s (extensions: %s)"
                            % (source.path, " ".join(data.IMAGE_EXTENSIONS)))
    if available < MIN_CALIBRATION:
        raise MbV3Error("%s holds %d images; calibration needs at least %d" % (source.describe(), available,
                                                                              MIN_CALIBRATION))
    if output is not None:
        output = os.path.abspath(output)
        if os.path.exists(output) and not os.path.isdir(output):
            raise MbV3Error("--output %s exists and is not a directory" % output)
        if os.path.isdir(output) and os.listdir(output):
            raise MbV3Error("--output %s is not empty; choose a new folder (the bundle is copied into it)" % output)
    args.source, args.calibration_size, args.output = source, size, output
    return args


def _score(runners, precision, files, prep, batch_size, workers, expected, progress_seconds, log):
    """Every engine's float32 and `precision` over the split's batches. Returns (tallies by (engine,
    precision), top-1 agreements by engine, skipped records, a batch of SPEED_BATCH inputs, seconds)."""
    tallies = {(engine, p): scoring.Tally() for engine in runners for p in ("f32", precision)}
    agree = dict.fromkeys(runners, 0)
    skipped, sample = 0, []
    start = last = time.time()
    for prepared in bundle_eval.prepared_batches(files, prep, batch_size, workers, log):
        usable = [p for p in prepared if p is not None]
        skipped += len(prepared) - len(usable)
        if usable:
            batch = np.stack([image for image, _ in usable])
            labels = np.array([label for _, label in usable])
            sample.extend(batch[:SPEED_BATCH - len(sample)])
            for engine, pair in runners.items():
                best = {}
                for key, runner in zip(("f32", precision), pair):
                    best[key] = classify.top_k_indices(runner.logits(batch), scoring.TOP_K)
                    tallies[(engine, key)].add(best[key], labels)
                agree[engine] += int((best["f32"][:, 0] == best[precision][:, 0]).sum())
        now = time.time()
        if now - last >= progress_seconds:
            last = now
            seen = next(iter(tallies.values())).seen
            rate = seen / max(now - start, 1e-9)
            log("quantize: %d/%d images (%.1f%%), %.1f img/s in every engine and precision, ETA %s" % (
                seen, expected, 100.0 * seen / expected, rate,
                format_duration((expected - seen - skipped) / rate) if rate > 0 else "?"))
    speed_batch = np.stack([sample[i % len(sample)] for i in range(SPEED_BATCH)]) if sample else None
    return tallies, agree, skipped, speed_batch, time.time() - start


def _openvino(engines, capabilities):
    """(openvino module or None, Core or None, capabilities, device name, version)."""
    if OPENVINO not in engines:
        return None, None, capabilities or (), None, None
    try:
        import openvino as ov
    except ImportError as e:
        raise MbV3Error("mbv3 quantize on OpenVINO needs the openvino package (%s)" % e)
    core = ov.Core()
    if capabilities is None:
        capabilities = core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    return ov, core, capabilities, str(core.get_property(DEVICE, "FULL_DEVICE_NAME")), ov.__version__.split("-")[0]


def _ort_version():
    import onnxruntime
    return onnxruntime.__version__


def cpu_name():
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def measure(bundle_dir, data_dir, precision="bf16", split="validation", max_top1_drop=None, force=False,
            batch_size=DEFAULT_BATCH, threads=0, workers=None, capabilities=None, write=True,
            progress_seconds=PROGRESS_SECONDS, log=say, engines=None, calibration=None, calibration_split=None,
            calibration_size=None, output=None, speed_seconds=SPEED_SECONDS):
    """Score float32 and `precision` over the split on each engine, time both at batch SPEED_BATCH,
    refuse or record one variant per engine; returns the recorded variants. int8 first quantizes
    model.onnx (NNCF, calibrated on `calibration_size` images) for each engine (int8_files), written
    into the bundle, or into a copy of it at `output`, only for an engine whose variant is recorded.
    capabilities: OpenVINO's OPTIMIZATION_CAPABILITIES for the CPU (None: asked of OpenVINO)."""
    args = check_arguments(bundle_dir, data_dir, split, precision, max_top1_drop, engines, calibration,
                           calibration_split, calibration_size, output)
    threshold, engines, split, record = args.max_top1_drop, args.engines, args.split, args.record
    loaded = onnx_classifier.verify_bundle(args.loaded.path)   # sha256s and shapes, as a server checks
    info = loaded.info
    ov, core, capabilities, device_name, ov_version = _openvino(engines, capabilities)
    native = {OPENVINO: NATIVE[precision] in capabilities,
              ONNXRUNTIME: True}   # ONNX Runtime's CPU provider has int8 kernels on every x86-64 and ARM CPU
    if OPENVINO in engines and not native[OPENVINO] and not force:
        raise MbV3Error("this CPU (%s) has no native %s (OpenVINO's OPTIMIZATION_CAPABILITIES: %s): the plugin "
                        "would not run it, so there is nothing to validate (--force records it anyway)"
                        % (device_name, precision, ", ".join(capabilities)))
    model_path = loaded.file(bundle.ONNX)
    source_sha = info.files[bundle.ONNX].sha256
    with tempfile.TemporaryDirectory(prefix="mbv3-quantize-") as scratch:
        # per engine: the model it runs as `precision`, and the bundle files that model is
        reduced = {engine: (model_path, ()) for engine in engines}
        calibration_records = dict.fromkeys(engines)
        if precision == "int8":
            inputs, _ = calibration_inputs(args.source, info.preprocessing, args.calibration_size, batch_size,
                                           workers, progress_seconds, log)
            for engine in engines:
                method = _quantize_for(engine, model_path, inputs, info.input.name, scratch, log)
                calibration_records[engine] = bundle.Calibration(source=args.source.path, split=args.source.split,
                                                                 images=len(inputs), method=method)
                names = int8_files(engine)
                reduced[engine] = (os.path.join(scratch, names[0]), names)
            del inputs
        runners, versions, device_names, runs_as = {}, {}, {}, {}
        for engine in engines:
            reduced_path = reduced[engine][0]
            if engine == OPENVINO:
                try:
                    runners[engine] = (_Compiled(core, core.read_model(model_path), "f32", threads),
                                       _Compiled(core, core.read_model(reduced_path), precision, threads))
                except Exception as e:   # OpenVINO raises RuntimeError and its own subclasses for a bad model
                    raise MbV3Error("openvino cannot load %s: %s" % (reduced_path, first_line(e)))
                versions[engine], device_names[engine] = ov_version, device_name
                runs_as[engine] = "the plugin reads back %s" % runners[engine][1].runs_as
            else:
                runners[engine] = (_Session(model_path, info, "f32", threads),
                                       _Session(reduced_path, info, precision, threads))
                versions[engine], device_names[engine] = _ort_version(), cpu_name()
                runs_as[engine] = "CPU provider"
        files = data.shard_files(data_dir, record)
        expected = int(record.written)
        log("%s: %s v%s: float32 vs %s on %s over %d %s images of %s" % (
            loaded.path, info.name, info.version, precision,
            ", ".join("%s %s (%s)" % (e, versions[e], runs_as[e]) for e in engines), expected, split,
            os.path.abspath(data_dir)))
        tallies, agree, skipped, speed_batch, seconds = _score(runners, precision, files, info.preprocessing,
                                                               batch_size, workers, expected, progress_seconds, log)
        first = tallies[(engines[0], "f32")]
        first.check(expected, skipped, log)
        seen = first.seen
        if not seen:
            raise MbV3Error("no usable %s example in %s (%d records skipped)" % (split, data_dir, skipped))
        log("scored %d images in %s; timing the model alone at batch %d" % (seen, format_duration(seconds), SPEED_BATCH))
        validated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        kept, refused = [], []
        for engine in engines:
            f32 = tallies[(engine, "f32")].fields(expected, skipped, 0)
            low = tallies[(engine, precision)].fields(expected, skipped, 0)
            float32_speed, reduced_speed = images_per_second(runners[engine], speed_batch, speed_seconds)
            drop = round(100.0 * (f32["top1"] - low["top1"]), 4)
            path, names = reduced[engine]
            weights = os.path.join(scratch, names[1]) if len(names) > 1 else None
            variant = bundle.PrecisionVariant(
                precision=precision, engine=engine, engine_version=versions[engine], device=DEVICE,
                device_name=device_names[engine], model_sha256=bundle.sha256(path), data=os.path.abspath(data_dir),
                split=split, examples=seen,
                float32=bundle.Accuracy(top1=f32["top1"], top5=f32["top5"]),
                reduced=bundle.Accuracy(top1=low["top1"], top5=low["top5"]),
                top1_agreement=agree[engine] / float(seen), max_top1_drop=float(threshold), top1_drop=drop,
                forced=bool(force and (drop > threshold or not native[engine])), native=native[engine],
                validated=validated, skipped_records=skipped,
                speed=bundle.Speed(batch=SPEED_BATCH, threads=int(threads or 0), float32=float32_speed,
                                   reduced=reduced_speed),
                file=names[0] if names else None, weights=names[1] if weights else None,
                weights_sha256=bundle.sha256(weights) if weights else None,
                source_sha256=source_sha if precision == "int8" else None, calibration=calibration_records[engine])
            log("%s: float32 top-1 %.4f top-5 %.4f; %s top-1 %.4f top-5 %.4f; top-1 drop %.2f points (at most %s); "
                "top-1 agreement %.4f; batch %d: %.1f vs %.1f images/s (%.2fx)"
                % (engine, f32["top1"], f32["top5"], precision, low["top1"], low["top5"], drop, threshold,
                   variant.top1_agreement, SPEED_BATCH, float32_speed, reduced_speed, variant.speed.ratio))
            if drop > threshold and not force:
                refused.append("%s loses %.2f points of top-1 on %s (float32 %.4f, %s %.4f)"
                               % (precision, drop, engine, f32["top1"], precision, low["top1"]))
            else:
                kept.append(variant)
        if refused and not kept:
            raise MbV3Error("%s over %d %s images, more than --max-top1-drop %s; nothing recorded (--force records "
                            "it anyway)" % ("; ".join(refused), seen, split, threshold))
        for reason in refused:
            log("warning: %s, more than --max-top1-drop %s: not recorded for that engine (--force records it)"
                % (reason, threshold))
        if write:
            where = _record(loaded, kept, {v.engine: reduced[v.engine] for v in kept}, args.output)
            log("recorded %s for %s in %s%s" % (precision, ", ".join(v.engine for v in kept), where,
                                                " (forced)" if any(v.forced for v in kept) else ""))
    return kept


def int8_files(engine):
    """The bundle files of `engine`'s int8 model, the model first."""
    return (INT8_IR, INT8_IR_WEIGHTS) if engine == OPENVINO else (INT8_FILE,)


def _quantize_for(engine, model_path, inputs, input_name, scratch, log):
    """`engine`'s int8 model of model_path, written into scratch as int8_files(engine); what was done."""
    if engine == OPENVINO:
        return quantize_openvino(model_path, inputs, input_name, os.path.join(scratch, INT8_IR), log)
    model_bytes, method = quantize_onnx(model_path, inputs, input_name, log)
    with open(os.path.join(scratch, INT8_FILE), "wb") as f:
        f.write(model_bytes)
    return method


def _record(loaded, variants, reduced, output):
    """Write the variants (and each one's int8 files, `reduced`: engine -> (path, names) in scratch)
    into the bundle, or into a copy of it at `output`; returns the model.json written. Each step
    leaves a bundle whose listed files match: earlier files of the same names and the records
    naming them are unlisted first, then the new files are written, then listed."""
    target, staging = loaded, None
    if output:
        staging = "%s.tmp-%d" % (output.rstrip(os.sep), os.getpid())
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(loaded.path, staging)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise MbV3Error("cannot copy %s to %s: %s" % (loaded.path, staging, e.strerror or e))
        target = bundle.load(staging)
    info = target.info
    try:
        names = [name for _, files in reduced.values() for name in files]
        if any(name in info.files for name in names):
            for name in names:
                info.files.pop(name, None)
            info.variants = [v for v in info.variants or () if not {v.file, v.weights} & set(names)] or None
            target.save_info()
        for path, files in reduced.values():
            for name in files:
                fileio.copy(os.path.join(os.path.dirname(path), name), target.file(name))
                info.files[name] = bundle.file_info(target.file(name))
        for variant in variants:
            info.record_variant(variant)
        target.save_info()
        if staging:
            try:
                os.replace(staging, output)
            except OSError as e:
                raise MbV3Error("cannot move %s to %s: %s" % (staging, output, e.strerror or e))
            return os.path.join(output, bundle.METADATA)
    finally:
        if staging and os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return target.file(bundle.METADATA)


def as_json(variants):
    """The recorded variants as model.json holds them (what the command prints)."""
    return [bundle.to_plain(v) for v in variants]
