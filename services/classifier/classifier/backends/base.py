"""The interface every backend implements. A backend is created and closed on its device's worker
thread, and runs there too: an ACL context is bound to the thread that made it.

A backend is built from explicit arguments (its model file, the bundle's ModelInfo for the shapes
the file must have, threads or a device): it knows nothing of the service's settings, so adding one
touches only its own module and the selection in backends/__init__.py."""
from __future__ import annotations

import numpy as np

from ..errors import ServiceError


class BackendError(ServiceError, RuntimeError):
    """Inference failed (the batch answers 503); `fatal` means the device is gone and the backend
    must be closed and loaded again before it can serve."""

    def __init__(self, message, fatal=False):
        super().__init__(message)
        self.fatal = fatal


class Backend:
    name = "base"
    image_shape = None   # (H, W, 3) of one input image: each backend sets it from the bundle's record
    num_classes = None   # logits per image, likewise
    threads = None       # CPU threads a run uses (the CPU backends; None where a device runs it)

    @property
    def max_batch(self) -> int:
        """Largest batch one run() accepts."""
        raise NotImplementedError

    @property
    def input_dtype(self):
        """np.float32 (normalised NHWC in [-1, 1]) or np.uint8 (RGB NHWC, normalisation inside the
        model, as an .om built with AIPP)."""
        return np.float32

    def run(self, batch: np.ndarray) -> np.ndarray:
        """logits float32 [N, num_classes] for a batch [N, H, W, 3] of input_dtype, N <= max_batch."""
        raise NotImplementedError

    def run_alone(self, batch: np.ndarray) -> np.ndarray:
        """run() of one image while no other worker runs: a CPU backend may use more threads then
        (Plan.alone_threads) than its share for batches."""
        return self.run(batch)

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Release everything; safe to call twice."""
