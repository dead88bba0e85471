"""OpenVINO on the CPU: an ONNX file of the bundle read directly (no conversion step), compiled for the
CPU plugin with the latency hint, the given threads and the precision the Plan decided
(backends.choose_precision): float32 model.onnx, model.onnx with the bf16 hint, or the int8 model
with the f32 hint (only its quantized operations run in int8) - mbv3.precision.openvino_config, the
configuration `mbv3 quantize` measured.

It compiles the model three times: with static shapes at batch 1, for a lone image on an idle
engine (run_alone, with Plan.alone_threads: every core), and at max_batch, for the full
micro-batches a busy service mostly runs (the CPU plugin runs a static batch of 8 4-17% faster than
the same batch through a dynamic shape: two measurements in docs/benchmarks.md), and with a dynamic
batch for the partial ones in between (and a batch of one, when the batches' threads are fewer than
a lone image's). The static max_batch model costs 23-46 MB of memory per worker (V3-Large 224, `make
bench-shapes`) for about 7% more requests a second at 32 clients. Compiling MobileNetV3 takes about 0.1-0.2 s
each, so there is no on-disk cache by default: the compiled models live as long as the backend,
and a read-only container needs no writable directory. `cache_dir` (OPENVINO_CACHE_DIR) turns on
OpenVINO's own model cache for bigger models where a restart should not recompile.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from mbv3 import onnx_classifier
from mbv3 import precision as variants
from mbv3.errors import BundleError, first_line

from .base import Backend, BackendError


# Workers load at once, each on its own thread; their models are compiled one at a time. The CPU plugin
# is documented as thread-safe, but once on a loaded CI machine a two-worker service never became
# ready and its log said nothing past its 503s while loading (not reproduced in a dozen starts since);
# compiling costs about 0.2 s a model, so a serial start-up is cheap insurance, not a proven fix.
_COMPILING = threading.Lock()


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

    def __init__(self, model_path, info, threads, max_batch, cache_dir="", precision="f32", alone_threads=0):
        """model_path: the .onnx file; info: the bundle's ModelInfo, whose input and output shapes the
        model must have; threads: inference threads of batches (0: OpenVINO's choice); alone_threads:
        of a lone image while no other worker runs (0: threads); max_batch: the largest run;
        cache_dir: OpenVINO's compiled-model cache directory, or "" for none; precision: the Plan's
        ("f32", "bf16", "int8"), already checked against the bundle's records and the CPU."""
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendError("BACKEND=openvino needs the openvino package (%s)" % e, fatal=True)
        self.version = ov.__version__.split("-")[0]
        self.path = model_path
        self.threads = int(threads)
        self.alone_threads = int(alone_threads) or self.threads
        self.precision = precision
        self._max_batch = int(max_batch)
        self.image_shape = (info.preprocessing.height, info.preprocessing.width, 3)
        self.num_classes = info.num_classes
        core = ov.Core()
        if cache_dir:
            core.set_property({"CACHE_DIR": cache_dir})
        # the hint is always set: on CPUs with bfloat16 (AVX512_BF16, AMX) the plugin's default precision is
        # bf16, about twice as fast and about 2% off ONNX Runtime's logits (tests/test_openvino_backend.py),
        # so bf16 runs only when the bundle records what it costs
        # Pinned, each model's threads start from the first core: right for a model that spans every core
        # (the lone image's, or one worker's batches), but the batch models of several workers would all
        # sit on the first cores: two one-thread workers on two cores ran 0.57x the images/s pinned.
        config = variants.openvino_config(precision, self.threads, pinned=self.threads >= self.alone_threads)
        try:
            with _COMPILING:
                alone, batched, full = self._compile(core, model_path, info, config)
        except BackendError:
            raise
        except Exception as e:   # OpenVINO raises RuntimeError (and its own subclasses) for a bad model
            raise BackendError("openvino cannot load %s: %s" % (model_path, first_line(e)), fatal=True)
        # the compiled model's own reading of the hint: what its floating-point operations run in
        self.inference_precision = variants.type_name(alone.get_property("INFERENCE_PRECISION_HINT"))
        self._alone, self._batched = alone.create_infer_request(), batched.create_infer_request()
        self._full = full.create_infer_request() if full is not None else None
        # a batch of one through the batcher: the static batch-1 model when it has the batches'
        # threads, else the dynamic one (a fourth compiled model would cost memory for little)
        self._single = self._alone if self.alone_threads == self.threads else self._batched

    def _compile(self, core, model_path, info, config):
        """(lone image's, dynamic batch's, static max_batch's or None) compiled models."""
        model = core.read_model(model_path)
        try:
            onnx_classifier.check_session(_Model(model), info, model_path)
        except BundleError as e:
            raise BackendError(str(e), fatal=True)
        batched = core.compile_model(model, "CPU", config)
        model.reshape([self._max_batch] + list(self.image_shape))
        full = core.compile_model(model, "CPU", config) if self._max_batch > 1 else None
        model.reshape([1] + list(self.image_shape))
        alone = core.compile_model(model, "CPU", variants.openvino_config(self.precision, self.alone_threads))
        return alone, batched, full

    @property
    def max_batch(self):
        return self._max_batch

    def run(self, batch):
        n = len(batch)
        return self._run(self._single if n == 1 else self._full if n == self._max_batch else self._batched, batch)

    def run_alone(self, batch):
        return self._run(self._alone, batch)

    def _run(self, request, batch):
        try:
            out = request.infer({0: np.ascontiguousarray(batch, np.float32)})[0]
        except Exception as e:
            raise BackendError("openvino run failed: %s" % first_line(e))
        return np.array(out, np.float32)   # a copy: the request reuses its output memory on the next run

    def describe(self):
        return "openvino %s (CPU plugin, latency hint, %s threads, a lone image %s, %s: %s, inference precision %s)" % (
            self.version, self.threads or "default", self.alone_threads or "default", self.precision,
            os.path.basename(self.path), self.inference_precision)

    def close(self):
        self._alone = self._single = self._batched = self._full = None
