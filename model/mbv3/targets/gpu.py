"""NVIDIA GPUs: MirroredStrategy over the local GPUs (MultiWorkerMirroredStrategy across hosts
when TF_CONFIG names a cluster), float16 with dynamic loss scaling, XLA via jit_compile."""
import tensorflow as tf

from ..errors import MbV3Error
from .base import Target, multi_worker_cluster


class GpuTarget(Target):
    name = "gpu"

    def make_strategy(self):
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            raise MbV3Error("target gpu: TensorFlow sees no GPU (is this the CUDA image, run with --gpus all?)")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        if multi_worker_cluster():
            return tf.distribute.MultiWorkerMirroredStrategy()
        return tf.distribute.MirroredStrategy()
