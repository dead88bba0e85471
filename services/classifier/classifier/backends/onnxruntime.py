"""ONNX Runtime on the CPU: the bundle's model.onnx, dynamic batch, configurable threads."""
from __future__ import annotations

import numpy as np

from mbv3 import bundle as bundle_mod

from .base import Backend, BackendError


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle, settings):
        super().__init__(bundle, settings)
        import onnxruntime as ort
        options = ort.SessionOptions()
        if settings.threads:
            options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        # ORT's workers spin after each run by default; in a server they then steal the cores that
        # decoding, preprocessing and the event loop need (measured: make bench-serve).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(bundle.file(bundle_mod.ONNX), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT's Fail/InvalidGraph/NoSuchFile share no public base class
            raise BackendError("onnxruntime cannot load %s: %s" % (bundle.file(bundle_mod.ONNX),
                                                                   str(e).strip().splitlines()[0]), fatal=True)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def max_batch(self):
        return self.settings.max_batch  # dynamic batch: any size; the batcher's limit applies

    def run(self, batch):
        try:
            return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        except Exception as e:
            raise BackendError("onnxruntime run failed: %s" % str(e).strip().splitlines()[0])

    def describe(self):
        threads = self.settings.threads or "default"
        return "onnxruntime %s (CPUExecutionProvider, %s intra-op threads)" % (
            __import__("onnxruntime").__version__, threads)

    def close(self):
        self.session = None
