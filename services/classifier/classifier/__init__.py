"""classifier: the HTTP service for mbv3 model bundles. It never imports TensorFlow, so the
Ascend 310 image stays small; backends run ONNX Runtime (CPU) or an ATC-built .om through pyACL."""

__version__ = "0.1.0"
