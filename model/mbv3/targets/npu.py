"""Ascend 910 through CANN's TensorFlow 2.x adapter (`npu_device`, TF 2.6.5).

Written against the adapter's published API (Ascend/tensorflow, tf_adapter_2.x/python/npu_device):
- `npu_device.global_options()` is read when the device opens, so precision_mode is set first;
  `npu_device.open().as_default()` must come before any other TensorFlow state is built: setup()
  runs before the model, the optimizer state or any dataset exists.
- Multi-card training is one process per card: `open()` reads ASCEND_DEVICE_ID, RANK_SIZE, RANK_ID
  and RANK_TABLE_FILE; gradients are summed with `npu_device.distribute.all_reduce` (HCCL) and the
  initial weights broadcast from rank 0 with `npu_device.distribute.broadcast`.
- Loop sinking: `npu_device.set_npu_loop_size(n)` before a tf.function that runs n steps.
- Mixed precision is the device's `allow_mix_precision` (the graph stays float32 in Python); float16
  overflow is detected with the adapter's float-status ops, as its NpuLossScaleOptimizer does,
  because the NPU saturates instead of producing inf/NaN.
- The adapter ignores jit_compile (XLA does not apply on the NPU).
No Ascend machine has run this: tests cover it with a recording test double of `npu_device`.
"""
import importlib
import os

import tensorflow as tf

from ..errors import MbV3Error
from .base import Target


class NpuTarget(Target):
    name = "npu"

    def __init__(self, cfg, npu_module=None):
        super(NpuTarget, self).__init__(cfg)
        self._npu = npu_module
        self.device = None
        if self.precision == "bfloat16":
            raise MbV3Error("target npu: bfloat16 is not available on the Ascend 910; use float16 (allow_mix_precision)")
        self.jit_compile = False  # ignored by the adapter anyway; say so in describe()

    @property
    def npu(self):
        if self._npu is None:
            try:
                self._npu = importlib.import_module("npu_device")
            except ImportError as e:
                raise MbV3Error("target npu needs CANN's TensorFlow adapter (npu_device): %s; run inside the "
                                "train-npu image with CANN's set_env.sh sourced" % e)
        return self._npu

    def setup(self):
        npu = self.npu
        options = npu.global_options()
        options.precision_mode = "allow_mix_precision" if self.precision == "float16" else "allow_fp32_to_fp16"
        self.device = npu.open().as_default()
        self.strategy = tf.distribute.get_strategy()
        return self.strategy

    @property
    def compute_dtype(self):
        return "float32"  # the adapter's precision_mode casts on the device

    @property
    def num_replicas(self):
        return int(getattr(self.device, "workers_num", 1) or 1)

    @property
    def worker_id(self):
        return int(getattr(self.device, "worker_id", 0) or 0)

    @property
    def worker(self):
        return "worker", self.worker_id

    @property
    def is_chief(self):
        return self.worker_id == 0

    def describe(self):
        return "npu: device %s, %d card(s) (this is rank %d), precision_mode %s%s" % (
            os.environ.get("ASCEND_DEVICE_ID", "0"), self.num_replicas, self.worker_id,
            "allow_mix_precision" if self.precision == "float16" else "allow_fp32_to_fp16",
            ", loss scaling" if self.uses_loss_scale else "")

    def all_reduce_sum(self, values):
        if self.num_replicas <= 1:
            return values
        return self.npu.distribute.all_reduce(values, "sum")

    def all_finite(self, grads):
        ops = self.npu.gen_npu_ops
        with tf.control_dependencies(grads):
            status = ops.npu_alloc_float_status()
        got = ops.npu_get_float_status(status)
        cleared = ops.npu_clear_float_status(got)
        if self.num_replicas > 1:
            with tf.control_dependencies([got]):
                status = self.npu.distribute.all_reduce(status, "sum")
        return tf.reduce_all(tf.equal(status, cleared))

    def distribute_dataset(self, dataset_fn):
        context = tf.distribute.InputContext(num_input_pipelines=self.num_replicas,
                                             input_pipeline_id=self.worker_id,
                                             num_replicas_in_sync=self.num_replicas)
        return dataset_fn(context)

    def run(self, fn, args):
        return fn(*args)

    def after_variables_created(self, variables):
        if self.num_replicas > 1:
            self.npu.distribute.broadcast(list(variables), root_rank=0)

    def before_loop(self, steps):
        self.npu.set_npu_loop_size(steps)
