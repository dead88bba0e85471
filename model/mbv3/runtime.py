"""Run a bundle's ONNX model with ONNX Runtime: no TensorFlow, so servers and `mbv3 predict` stay light."""
from __future__ import absolute_import, division, print_function

import numpy as np

from . import bundle as bundle_mod
from .errors import BundleError, first_line


def onnx_session(model, threads=0):
    """A CPU InferenceSession for a path or serialized bytes; threads=0 lets ORT choose."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types without a common base
        raise BundleError("ONNX Runtime cannot load %s: %s" % (model if isinstance(model, str) else "the model",
                                                              first_line(e)))


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probabilities, labels, k=5):
    """Per row, the k best [(index, label, probability)], best first."""
    k = min(k, probabilities.shape[-1])
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return [[(int(i), labels[i], float(row[i])) for i in idx] for row, idx in zip(probabilities, order)]


class OnnxClassifier(object):
    """A loaded bundle plus its ONNX Runtime session."""

    def __init__(self, path, threads=0):
        self.bundle = bundle_mod.load(path)
        meta = self.bundle.metadata
        self.input_name = meta["input"]["name"]
        self.output_name = meta["output"]["name"]
        self.size = meta["preprocessing"]["size"]
        self.session = onnx_session(self.bundle.file(bundle_mod.ONNX), threads)

    def logits(self, batch):
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def classify(self, batch, k=5):
        return top_k(softmax(self.logits(batch)), self.bundle.labels, k)
