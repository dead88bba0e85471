"""ONNX Runtime on the CPU: a bundle's model.onnx, or its int8 model when the Plan says so (a QDQ
ONNX file the default CPU provider runs), dynamic batch, configurable threads."""
from __future__ import annotations

import os

import numpy as np

from mbv3 import onnx_classifier
from mbv3.errors import BundleError, first_line

from .base import Backend, BackendError


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_path, info, threads, max_batch, precision="f32", alone_threads=0):
        """model_path: the .onnx file; info: the bundle's ModelInfo, whose input and output shapes
        the model must have; threads: intra-op threads of batches; alone_threads: of a lone image
        while no other worker runs (0: threads); max_batch: the largest run (the model's batch is
        dynamic, so this is the caller's limit); precision: the Plan's ("f32" or "int8"), which
        model_path is."""
        self.path = model_path
        self.precision = precision
        self.threads = int(threads)
        self.alone_threads = int(alone_threads) or self.threads
        self._max_batch = int(max_batch)
        self.image_shape = (info.preprocessing.height, info.preprocessing.width, 3)
        self.num_classes = info.num_classes
        # Two sessions on the same model: ORT's intra-op workers spin after each run by default, which
        # shortens a lone request's inference but, under load, steals the cores that decoding and
        # preprocessing need. A lone image on an idle engine runs on the spinning session with
        # alone_threads, batches (of one image too) on the other (make bench-serve measures both sides).
        self.single = self._session(spinning=True, threads=self.alone_threads)
        try:
            onnx_classifier.check_session(self.single, info, model_path)
        except BundleError as e:
            raise BackendError(str(e), fatal=True)
        self.batched = self._session(spinning=False, threads=self.threads)
        self.input_name = self.single.get_inputs()[0].name
        self.output_name = self.single.get_outputs()[0].name

    def _session(self, spinning, threads):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            return ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT's Fail/InvalidGraph/NoSuchFile share no public base class
            raise BackendError("onnxruntime cannot load %s: %s" % (self.path, first_line(e)), fatal=True)

    @property
    def max_batch(self):
        return self._max_batch

    def run(self, batch):
        return self._run(self.batched, batch)

    def run_alone(self, batch):
        return self._run(self.single, batch)

    def _run(self, session, batch):
        try:
            return session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        except Exception as e:
            raise BackendError("onnxruntime run failed: %s" % first_line(e))

    def describe(self):
        return "onnxruntime %s (CPUExecutionProvider, %s intra-op threads, a lone image %s, %s: %s)" % (
            __import__("onnxruntime").__version__, self.threads, self.alone_threads, self.precision,
            os.path.basename(self.path))

    def close(self):
        self.single = self.batched = None
