"""Hardware targets: the only place that knows CPU, GPU or Ascend NPU specifics.

A target sets the device up (before anything else touches TensorFlow, which the NPU adapter
requires), chooses the tf.distribute strategy, the compute dtype and loss scaling, and supplies the
few collective operations the training loop needs. The loop itself never branches on hardware.
"""
from ..errors import MbV3Error

NAMES = ("cpu", "gpu", "npu")
# target.precision, named for what runs (docs/training.md); each target says which it offers
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "float16_matmul")


def get(name, cfg):
    """The target called `name`, configured from the config's `target` section."""
    if name == "cpu":
        from .cpu import CpuTarget as cls
    elif name == "gpu":
        from .gpu import GpuTarget as cls
    elif name == "npu":
        from .npu import NpuTarget as cls
    else:
        raise MbV3Error("unknown target %r (choose from %s)" % (name, ", ".join(NAMES)))
    return cls(cfg)
