"""Ascend NPU through CANN's TensorFlow 2.x adapter (`npu_device`, TF 2.6.5).

Written against the adapter's published source, `tf_adapter_2.x/python/npu_device/` in Ascend/tensorflow
(the TF 2.6 era) and hicann/tensorflow (current CANN); docs/verified.md says what was compared:
- `global_options()` is read when the device opens (npu_device.py `open()`), so precision_mode is set
  first; `open().as_default()` must come before any other TensorFlow state is built: setup() runs
  before the model, the optimizer state or any dataset exists.
- Multi-card training is one process per card: `open()` reads ASCEND_DEVICE_ID, RANK_SIZE, RANK_ID
  and RANK_TABLE_FILE; gradients are summed with `distribute.all_reduce` (HCCL) and the initial
  weights broadcast from rank 0 with `distribute.broadcast` (distribute/hccl.py).
- Loop sinking: `set_npu_loop_size(n)` before a tf.function that runs n steps.
- float16 overflow is seen the way the adapter's NpuLossScaleOptimizer sees it
  (train/optimizer/npu_loss_scale_optimizer.py), chosen by what the installed adapter offers: in
  INF_NAN mode (`is_inf_nan_enabled()`, the Atlas A2 default) overflow yields inf/NaN and ordinary
  loss scaling applies; in saturation mode (the only mode of the Atlas training series, 910/910A)
  results saturate instead, so the float-status ops read the overflow flag, v2 where the adapter
  has them, else v1. Those ops, and the all-reduce of their result, are built inside the
  `_npu_loss_scale` attribute scope with `fusion=0`: the adapter's ControlEdgeOptimizer
  (npu_device/core/optimizers/meta/npu_control_edge_optimizer.cpp) drops control edges leaving an
  HcomAllReduce that lacks that attribute, and fusion 0 keeps it out of the gradients' fused all-reduce.
- The adapter ignores jit_compile (XLA does not apply on the NPU).
No Ascend machine has run this: tests cover it with a recording test double of `npu_device`.
"""
import importlib
import os

import tensorflow as tf

from ..errors import MbV3Error
from .base import Target

# target.precision -> the adapter's precision_mode (CANN's precision_mode reference; docs/ascend.md)
PRECISION_MODES = {
    "float32": "must_keep_origin_dtype",      # every op in the graph's float32
    "mixed_float16": "allow_mix_precision",   # CANN lowers ops on its float16 list; loss scaling here
    "float16_matmul": "allow_fp32_to_fp16",   # convolutions and matmuls in float16, the rest float32
}
LOSS_SCALE_ATTR = "_npu_loss_scale"
# how float16 overflow is seen (setup() chooses; describe() says which)
INF_NAN, FLOAT_STATUS_V2, FLOAT_STATUS_V1 = "inf_nan", "float_status_v2", "float_status_v1"
OVERFLOW_CHECKS = {
    INF_NAN: "INF_NAN mode: ordinary loss scaling (inf/NaN in the gradients)",
    FLOAT_STATUS_V2: "saturation mode: overflow flag read with npu_get_float_status_v2",
    FLOAT_STATUS_V1: "saturation mode: overflow flag read with npu_get_float_status (v1)",
}


class NpuTarget(Target):
    name = "npu"
    precisions = tuple(PRECISION_MODES)
    not_offered = {"mixed_bfloat16": "CANN's allow_mix_precision_bf16 exists only on the Atlas A2 series and is "
                                     "not wired here; use mixed_float16"}

    def __init__(self, cfg, npu_module=None):
        super(NpuTarget, self).__init__(cfg)
        self._npu = npu_module
        self.device = None
        self.overflow_check = None
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

    @property
    def precision_mode(self):
        return PRECISION_MODES[self.precision]

    def setup(self):
        npu = self.npu
        npu.global_options().precision_mode = self.precision_mode
        self.device = npu.open().as_default()
        if self.uses_loss_scale:
            self.overflow_check = self._choose_overflow_check()
        self.strategy = tf.distribute.get_strategy()
        return self.strategy

    def _choose_overflow_check(self):
        """INF_NAN when the adapter says the device is in that mode, else the newest float-status ops it has."""
        npu = self.npu
        inf_nan = getattr(npu, "is_inf_nan_enabled", None)        # hicann/tensorflow's npu_device
        if inf_nan is None:                                        # GetDeviceSatMode() == 1 is what it asks
            sat_mode = getattr(getattr(npu, "npu_device", None), "get_device_sat_mode", None)
            inf_nan = (lambda: sat_mode() == 1) if sat_mode is not None else None
        if inf_nan is not None and inf_nan():
            return INF_NAN
        ops = npu.gen_npu_ops
        if hasattr(ops, "npu_get_float_status_v2") and hasattr(ops, "npu_clear_float_status_v2"):
            return FLOAT_STATUS_V2
        return FLOAT_STATUS_V1

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
        return "npu: device %s, %d card(s) (this is rank %d), precision %s (precision_mode %s)%s" % (
            os.environ.get("ASCEND_DEVICE_ID", "0"), self.num_replicas, self.worker_id, self.precision,
            self.precision_mode, ", loss scaling, %s" % OVERFLOW_CHECKS[self.overflow_check]
            if self.uses_loss_scale else "")

    def all_reduce_sum(self, values):
        if self.num_replicas <= 1:
            return values
        return self.npu.distribute.all_reduce(values, "sum")

    def all_finite(self, grads):
        if self.overflow_check == INF_NAN:
            return super(NpuTarget, self).all_finite(grads)
        executed = [g for g in grads if g is not None]
        scope = tf.compat.v1.get_default_graph()._attr_scope({LOSS_SCALE_ATTR: tf.compat.v1.AttrValue(b=True)})
        with scope:
            if self.overflow_check == FLOAT_STATUS_V2:
                return self._finite_v2(executed)
            return self._finite_v1(executed)

    def _finite_v2(self, executed):
        """hicann/tensorflow tf_adapter_2.x/.../npu_loss_scale_optimizer.py, _npu_finite_status_after_executed."""
        ops = self.npu.gen_npu_ops
        with tf.control_dependencies(executed):
            status = ops.npu_get_float_status_v2()
        with tf.control_dependencies([status]):
            cleared = ops.npu_clear_float_status_v2()
        if self.num_replicas > 1:
            status = self.npu.distribute.all_reduce([status], "sum", fusion=0)
        with tf.control_dependencies([cleared]):
            return tf.reduce_all(tf.equal(status, 0))

    def _finite_v1(self, executed):
        """Ascend/tensorflow tf_adapter_2.x/.../npu_loss_scale_optimizer.py, _npu_finite_status_after_executed."""
        ops = self.npu.gen_npu_ops
        with tf.control_dependencies(executed):
            status = ops.npu_alloc_float_status()
        got = ops.npu_get_float_status(status)
        cleared = ops.npu_clear_float_status(got)
        if self.num_replicas > 1:
            with tf.control_dependencies([got]):
                status = self.npu.distribute.all_reduce(status, "sum", fusion=0)
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
