"""mbv3: MobileNetV3 with TF-slim-compatible checkpoints, trained on GPUs or Ascend NPUs and
exported as a model bundle (ONNX + frozen GraphDef + metadata) for serving.

Importing the package does not import TensorFlow: `mbv3.bundle` and `mbv3.numpy_preprocess` are usable
where only NumPy, Pillow and ONNX Runtime are installed (the inference service)."""

__version__ = "0.1.0"
