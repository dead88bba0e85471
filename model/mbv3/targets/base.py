"""What every target provides; the CPU and GPU targets differ only in devices and defaults."""
import json
import os

import tensorflow as tf

from ..errors import MbV3Error
from . import PRECISIONS

# the dtype the layers compute in on CPU and GPU, per target.precision (Keras' mixed-precision policies)
COMPUTE_DTYPES = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def multi_worker_cluster():
    """True when TF_CONFIG describes a cluster of more than one worker."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return False
    try:
        cluster = json.loads(raw).get("cluster", {})
    except ValueError:
        raise MbV3Error("TF_CONFIG is not valid JSON")
    return len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1


class Target(object):
    name = "base"
    # target.precision values this target offers, and why it refuses the others
    precisions = ("float32", "mixed_float16", "mixed_bfloat16")
    not_offered = {"float16_matmul": "it is the Ascend NPU's precision_mode allow_fp32_to_fp16; use target npu"}

    def __init__(self, cfg):
        self.cfg = cfg
        self.precision = str(cfg.get("precision") or "float32").lower()
        if self.precision not in PRECISIONS:
            raise MbV3Error("target.precision must be one of %s, got %r" % (", ".join(PRECISIONS), self.precision))
        if self.precision not in self.precisions:
            raise MbV3Error("target %s: target.precision %s is not offered: %s (choose %s)" % (
                self.name, self.precision, self.not_offered[self.precision], ", ".join(self.precisions)))
        self.jit_compile = bool(cfg.get("xla"))
        self.steps_per_loop = max(1, int(cfg.get("steps_per_loop") or 1))
        self.strategy = None

    # --- set-up ---------------------------------------------------------------------------
    def setup(self):
        """Create the strategy. Called once, before the model or any dataset exists."""
        self.strategy = self.make_strategy()
        return self.strategy

    def make_strategy(self):
        if multi_worker_cluster():
            return tf.distribute.MultiWorkerMirroredStrategy()
        return tf.distribute.get_strategy()

    # --- facts the loop needs -------------------------------------------------------------
    @property
    def compute_dtype(self):
        return COMPUTE_DTYPES[self.precision]

    @property
    def uses_loss_scale(self):
        return self.precision == "mixed_float16"

    @property
    def num_replicas(self):
        return self.strategy.num_replicas_in_sync

    @property
    def worker(self):
        """(task type, index) of this process in a multi-worker cluster, else ("chief", 0)."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or not multi_worker_cluster():
            return "chief", 0
        return resolver.task_type, resolver.task_id

    @property
    def is_chief(self):
        task_type, task_id = self.worker
        if task_type == "chief":
            return True
        resolver = self.strategy.cluster_resolver
        return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()

    def describe(self):
        return "%s: %s, %d replica(s), compute %s%s%s" % (
            self.name, type(self.strategy).__name__, self.num_replicas, self.compute_dtype,
            ", loss scaling" if self.uses_loss_scale else "", ", XLA" if self.jit_compile else "")

    # --- inside the step (replica context) ------------------------------------------------
    def all_reduce_sum(self, values):
        """Sum of per-replica values across every replica in the job."""
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)

    def all_finite(self, grads):
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])

    def distribute_dataset(self, dataset_fn):
        """dataset_fn(input_context) -> per-replica tf.data.Dataset."""
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def run(self, fn, args):
        return self.strategy.run(fn, args=args)

    def after_variables_created(self, variables):
        """Hook for targets that must synchronise initial values themselves (NPU: HCCL broadcast)."""

    def before_loop(self, steps):
        """Hook called with the number of steps one host call will run (NPU: loop sinking)."""
