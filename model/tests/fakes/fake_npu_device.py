"""A recording test double of CANN's TF2 adapter `npu_device`, for mbv3.targets.npu.

It mirrors the adapter's public surface that the target uses (global_options, open().as_default(),
set_npu_loop_size, distribute.all_reduce / broadcast, gen_npu_ops float-status ops) and records every
call in order. It proves the target calls the adapter in the documented order with the documented
arguments; it cannot prove the real adapter accepts the graph or that HCCL/loop sinking behave.
"""
import os

import tensorflow as tf


class Recorder(object):
    def __init__(self):
        self.calls = []
        self.overflow_steps = set()   # steps (counted by get_float_status calls) that report overflow

    def record(self, name, *args):
        self.calls.append((name,) + tuple(args))

    def names(self):
        return [c[0] for c in self.calls]


class _Options(object):
    def __init__(self, rec):
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "precision_mode", None)

    def __setattr__(self, key, value):
        self._rec.record("global_options.set", key, value)
        object.__setattr__(self, key, value)


class _Handle(object):
    def __init__(self, rec, workers_num, worker_id):
        self._rec, self.workers_num, self.worker_id = rec, workers_num, worker_id

    def as_default(self):
        self._rec.record("as_default")
        return self


class _Distribute(object):
    def __init__(self, rec):
        self._rec = rec

    def all_reduce(self, values, reduction="mean", fusion=1, fusion_id=-1, group="hccl_world_group"):
        self._rec.record("all_reduce", reduction, len(values) if isinstance(values, (list, tuple)) else 1)
        return values  # one process stands in for every card: the sum over identical cards is this card's value

    def broadcast(self, values, root_rank=0, fusion=2, fusion_id=0, group="hccl_world_group"):
        self._rec.record("broadcast", len(values), root_rank)


class _FloatStatusOps(object):
    """npu_alloc_float_status / npu_get_float_status / npu_clear_float_status.

    On the device, get writes the overflow register into the allocated status tensor in place, and
    the adapter compares that tensor with clear's (zero) output. TensorFlow tensors cannot be mutated
    here, so the double keeps the allocated status at zero and makes clear's output non-zero after an
    overflow: the comparison the target makes (status == cleared) comes out as on the device."""

    def __init__(self, rec):
        self._rec = rec
        self._gets = tf.Variable(0, dtype=tf.int64, trainable=False)

    def npu_alloc_float_status(self):
        self._rec.record("npu_alloc_float_status")
        return tf.zeros([8], tf.float32)

    def npu_get_float_status(self, status):
        self._rec.record("npu_get_float_status")
        n = self._gets.assign_add(1)
        bad = tf.reduce_any(tf.equal(n, tf.constant(sorted(self._rec.overflow_steps) or [-1], tf.int64)))
        return tf.where(bad, tf.ones_like(status), status)

    def npu_clear_float_status(self, status):
        self._rec.record("npu_clear_float_status")
        return status  # non-zero exactly when get saw an overflow (see the class docstring)


class FakeNpuDevice(object):
    """Use as `NpuTarget(cfg, npu_module=FakeNpuDevice())`."""

    def __init__(self):
        self.recorder = Recorder()
        self._options = _Options(self.recorder)
        self.distribute = _Distribute(self.recorder)
        self.gen_npu_ops = None

    def global_options(self):
        self.recorder.record("global_options")
        return self._options

    def open(self, device_id=None):
        workers = int(os.environ.get("RANK_SIZE", "1"))
        if workers > 1 and not (os.environ.get("RANK_TABLE_FILE") and os.environ.get("RANK_ID")):
            raise RuntimeError("You must specify a rank table file by set env RANK_TABLE_FILE in distribution mode")
        self.recorder.record("open", int(os.environ.get("ASCEND_DEVICE_ID", "0")) if device_id is None else device_id)
        self.gen_npu_ops = _FloatStatusOps(self.recorder)
        return _Handle(self.recorder, workers, int(os.environ.get("RANK_ID", "0")))

    def set_npu_loop_size(self, n):
        self.recorder.record("set_npu_loop_size", n)
