"""What every peer server wraps: the service's own preprocessing (mbv3.fast_preprocess, driven by
the bundle's record) and the same engine (ONNX Runtime or OpenVINO on the model file the bundle
records for the precision and that engine; OpenVINO compiled with mbv3.precision.openvino_config
as the service's backend compiles it), batch 1 or a batch, then softmax and top-5 without the
background class. Only mbv3's TensorFlow-free modules are used (on PYTHONPATH), so a peer's own
virtual environment needs NumPy, Pillow, simplejpeg, OpenCV and the engine, not the service."""
import argparse

import numpy as np

from mbv3 import bundle, fast_preprocess
from mbv3 import precision as mp
from mbv3.classify import softmax, top_k


class Classifier:
    def __init__(self, bundle_dir, backend="onnxruntime", threads=2, precision="f32"):
        self.bundle = bundle.load(bundle_dir)
        self.prep = self.bundle.preprocessing
        self.labels = self.bundle.labels
        self.background = self.bundle.background_index
        self.transform, _ = fast_preprocess.select("auto")
        name = self.bundle.info.model_file(precision, backend)
        if name is None:
            raise SystemExit("the bundle records no %s variant for %s" % (precision, backend))
        path = self.bundle.file(name)
        if backend == "openvino":
            import openvino as ov
            compiled = ov.Core().compile_model(path, "CPU", mp.openvino_config(precision, threads))
            request = compiled.create_infer_request()
            self._run = lambda x: np.array(request.infer({0: x})[0])
        else:
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._run = lambda x: session.run(None, {name: x})[0]
        self.logits(np.zeros((1, self.prep.height, self.prep.width, 3), np.float32))   # warm up

    def preprocess(self, data):
        return self.transform(data, self.prep)

    def logits(self, batch):
        return self._run(np.ascontiguousarray(batch, np.float32))

    def answer(self, logits_row, k=5):
        (best,) = top_k(softmax(logits_row[np.newaxis].astype(np.float64)), self.labels, k, skip=self.background)
        return [{"label": label, "index": i, "score": score} for i, label, score in best]

    def classify(self, data, k=5):
        return self.answer(self.logits(self.preprocess(data)[np.newaxis])[0], k)


def arguments():
    """The command line every peer takes (peer_harness starts them with it): the bundle, the port,
    the engine and its threads."""
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="f32", help="f32, or a variant the bundle records (bf16, int8)")
    return p
