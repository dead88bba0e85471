"""OpenVINO on the CPU: the bundle's model.onnx read directly (no conversion step, no extra file in
the bundle), compiled for the CPU plugin with the latency hint, the precision choose_precision()
picks (float32 unless the bundle records bfloat16 as validated and the CPU runs it natively) and
the given threads.

Like the ONNX Runtime backend it compiles the model twice: at batch 1 with static shapes, for lone
images, and with a dynamic batch, for micro-batches. Compiling MobileNetV3 takes about 0.1-0.2 s
each, so there is no on-disk cache by default: the compiled models live as long as the backend,
and a read-only container needs no writable directory. `cache_dir` (OPENVINO_CACHE_DIR) turns on
OpenVINO's own model cache for bigger models where a restart should not recompile.
"""
from __future__ import annotations

import numpy as np

from mbv3 import onnx_classifier
from mbv3 import precision as variants
from mbv3.errors import BundleError, first_line

from . import PRECISIONS
from .base import Backend, BackendError


def choose_precision(setting, info, capabilities):
    """(hint, why): the INFERENCE_PRECISION_HINT to compile with, and the reason in words.
    setting: PRECISION (PRECISIONS); info: the bundle's ModelInfo; capabilities: the CPU plugin's
    OPTIMIZATION_CAPABILITIES. bf16 runs only when the bundle records it as validated on OpenVINO
    (`mbv3 quantize --precision bf16`) AND the CPU has it natively; PRECISION=bf16 without both is a
    fatal BackendError, PRECISION=auto falls back to f32 and says why."""
    if setting not in PRECISIONS:
        raise BackendError("PRECISION=%r: choose one of %s" % (setting, ", ".join(PRECISIONS)), fatal=True)
    if setting == "f32":
        return variants.HINTS["f32"], "PRECISION=f32"
    record = info.variant("bf16", variants.ENGINE)
    native = variants.NATIVE["bf16"] in capabilities
    if record is not None and native:
        return variants.HINTS["bf16"], "PRECISION=%s: %s; the CPU has BF16" % (setting, _validated(record))
    missing = []
    if record is None:
        missing.append("the bundle records no bf16 variant validated on OpenVINO for its model.onnx "
                       "(mbv3 quantize --precision bf16)")
    if not native:
        missing.append("the CPU has no native bf16 (OPTIMIZATION_CAPABILITIES: %s)" % ", ".join(capabilities))
    if setting == "bf16":
        raise BackendError("PRECISION=bf16 cannot run: %s" % "; ".join(missing), fatal=True)
    return variants.HINTS["f32"], "PRECISION=auto: f32, as %s" % "; ".join(missing)


def _validated(record):
    return ("bf16 validated on %d %s images with OpenVINO %s (top-1 %.4f vs float32 %.4f, %.2f points down, "
            "at most %s; top-1 agreement %.4f%s)" % (
                record.examples, record.split, record.engine_version, record.reduced.top1, record.float32.top1,
                record.top1_drop, record.max_top1_drop, record.top1_agreement,
                "; recorded with --force" if record.forced else ""))


class _Port:
    """An OpenVINO input or output seen as onnx_classifier.check_session sees ONNX Runtime's."""

    def __init__(self, port):
        shape = port.get_partial_shape()
        self.shape = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []


class _Model:
    def __init__(self, model):
        self.model = model

    def get_inputs(self):
        return [_Port(p) for p in self.model.inputs]

    def get_outputs(self):
        return [_Port(p) for p in self.model.outputs]


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, model_path, info, threads, max_batch, cache_dir="", precision="auto", capabilities=None):
        """model_path: the .onnx file; info: the bundle's ModelInfo, whose input and output shapes the
        model must have; threads: inference threads (0: OpenVINO's choice); max_batch: the largest
        run; cache_dir: OpenVINO's compiled-model cache directory, or "" for none; precision: the
        PRECISION setting (choose_precision); capabilities: the CPU's OPTIMIZATION_CAPABILITIES,
        None to ask OpenVINO (tests pass a CPU's they do not have)."""
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendError("BACKEND=openvino needs the openvino package (%s)" % e, fatal=True)
        self.version = ov.__version__.split("-")[0]
        self.path = model_path
        self.threads = int(threads)
        self._max_batch = int(max_batch)
        self.image_shape = (info.preprocessing.height, info.preprocessing.width, 3)
        self.num_classes = info.num_classes
        core = ov.Core()
        if cache_dir:
            core.set_property({"CACHE_DIR": cache_dir})
        if capabilities is None:
            capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        # the hint is always set: on CPUs with bfloat16 (AVX512_BF16, AMX) the plugin's default precision is
        # bf16, about twice as fast and about 2% off ONNX Runtime's logits (tests/test_openvino_backend.py),
        # so bf16 runs only when the bundle records what it costs
        hint, self.precision_why = choose_precision(precision, info, list(capabilities))
        config = variants.openvino_config(hint, self.threads)
        try:
            model = core.read_model(model_path)
            try:
                onnx_classifier.check_session(_Model(model), info, model_path)
            except BundleError as e:
                raise BackendError(str(e), fatal=True)
            batched = core.compile_model(model, "CPU", config)
            model.reshape([1] + list(self.image_shape))
            single = core.compile_model(model, "CPU", config)
        except BackendError:
            raise
        except Exception as e:   # OpenVINO raises RuntimeError (and its own subclasses) for a bad model
            raise BackendError("openvino cannot load %s: %s" % (model_path, first_line(e)), fatal=True)
        self.precision = variants.type_name(single.get_property("INFERENCE_PRECISION_HINT"))   # what runs
        self._single, self._batched = single.create_infer_request(), batched.create_infer_request()

    @property
    def max_batch(self):
        return self._max_batch

    def run(self, batch):
        request = self._single if len(batch) == 1 else self._batched
        try:
            out = request.infer({0: np.ascontiguousarray(batch, np.float32)})[0]
        except Exception as e:
            raise BackendError("openvino run failed: %s" % first_line(e))
        return np.array(out, np.float32)   # a copy: the request reuses its output memory on the next run

    def describe(self):
        return "openvino %s (CPU plugin, latency hint, %s threads, %s: %s)" % (
            self.version, self.threads or "default", self.precision, self.precision_why)

    def close(self):
        self._single = self._batched = None
