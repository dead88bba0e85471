"""Run a bundle's ONNX model with ONNX Runtime: no TensorFlow, so servers and `mbv3 predict` stay light."""
import numpy as np

from . import bundle
from .classify import softmax, top_k
from .errors import BundleError, first_line

ENGINE = "onnxruntime"           # this engine's name in a bundle's precision records
PRECISIONS = ("f32", "int8")     # what it runs from a bundle: model.onnx, or the validated int8 model


def model_file(info, precision="f32"):
    """The bundle file ONNX Runtime runs for `precision`: model.onnx for f32; for int8 the file of the
    int8 variant validated on ONNX Runtime for the bundle's current model.onnx, or a one-line error."""
    if precision == "f32":
        return bundle.ONNX
    if precision not in PRECISIONS:
        raise BundleError("precision %r: ONNX Runtime runs %s" % (precision, " or ".join(PRECISIONS)))
    name = info.model_file(precision, ENGINE)
    if name is None:
        raise BundleError("the bundle records no %s variant validated on ONNX Runtime for its model.onnx "
                          "(mbv3 quantize --precision %s)" % (precision, precision))
    return name


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


def check_session(session, info, where):
    """The ONNX model's own input and output shapes agree with model.json (a bundle whose files were
    swapped or whose num_classes was edited is refused here, not on the first request)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise BundleError("%s has %d inputs and %d outputs; expected one image input and one logits output"
                          % (where, len(inputs), len(outputs)))
    want_in = [info.preprocessing.height, info.preprocessing.width, 3]
    got_in = list(inputs[0].shape[1:])
    if got_in != want_in:
        raise BundleError("%s takes input [N, %s], but model.json says [N, %s]"
                          % (where, ", ".join(map(str, got_in)), ", ".join(map(str, want_in))))
    classes = outputs[0].shape[-1] if len(outputs[0].shape) == 2 else None
    if classes != info.num_classes:
        raise BundleError("%s outputs %s classes, but model.json says num_classes %d (and labels.txt has as many)"
                          % (where, classes, info.num_classes))


def verify_bundle(path, precision="f32"):
    """Everything a server checks before it serves: model.json against its schema, every file's size
    and sha256, labels = num_classes, and the shapes of the ONNX model `precision` runs. Returns the
    loaded bundle."""
    loaded = bundle.load(path, verify=True)
    model = loaded.file(model_file(loaded.info, precision))
    check_session(onnx_session(model), loaded.info, model)
    return loaded


class OnnxClassifier(object):
    """A loaded bundle plus an ONNX Runtime session of the model it runs in `precision` (model_file)."""

    def __init__(self, path, threads=0, precision="f32"):
        self.bundle = bundle.load(path)
        self.input_name = self.bundle.info.input.name
        self.output_name = self.bundle.info.output.name
        self.size = self.bundle.preprocessing.size
        self.model_file = model_file(self.bundle.info, precision)
        self.session = onnx_session(self.bundle.file(self.model_file), threads)
        check_session(self.session, self.bundle.info, self.bundle.file(self.model_file))

    def logits(self, batch):
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def classify(self, batch, k=5):
        return top_k(softmax(self.logits(batch)), self.bundle.labels, k, skip=self.bundle.background_index)
