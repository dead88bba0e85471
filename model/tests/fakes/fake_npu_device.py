"""A recording test double of CANN's TF2 adapter `npu_device`, for mbv3.targets.npu.

It has the adapter's public surface that the target uses (global_options, open().as_default(),
set_npu_loop_size, distribute.all_reduce / broadcast, gen_npu_ops float-status ops, and in the
current adapter is_inf_nan_enabled) and records every call in order. It refuses what the real
adapter refuses, each rule with the source it comes from (repository and path); `adapter` picks which
published adapter it plays:
  "tf2.6"   Ascend/tensorflow tf_adapter_2.x/python/npu_device (the TF 2.6.5 era): float-status v1
            ops only, no overflow-mode query;
  "current" hicann/tensorflow tf_adapter_2.x/python/npu_device: v1 and v2 float-status ops and
            is_inf_nan_enabled(), which answers `inf_nan`.
It proves the target calls the adapter in the documented order with arguments the adapter accepts;
it cannot prove the real adapter compiles the graph, nor anything about HCCL or loop sinking.
"""
import os

import tensorflow as tf

ADAPTERS = ("tf2.6", "current")
LOSS_SCALE_ATTR = "_npu_loss_scale"

# npu_device.configs.npu_config.NpuConfig: every option name and, where the adapter lists them, the
# values it accepts (Ascend/tensorflow tf_adapter_2.x/python/npu_device/configs/npu_config.py at
# a6685da9). Not here: the nested configs (dump_config, profiling_config, ...), which are objects, and
# the DeprecatedValue options, which the real adapter still takes with a warning -- the double refuses
# both, deliberately, so mbv3 never sets one unnoticed.
NPU_OPTIONS = {
    "graph_run_mode": [0, 1], "graph_memory_max_size": None, "variable_memory_max_size": None,
    "enable_scope_fusion_passes": None, "fusion_switch_file": None,
    "precision_mode": ["force_fp32", "allow_fp32_to_fp16", "force_fp16", "must_keep_origin_dtype",
                       "allow_mix_precision", "cube_fp16in_fp32out", "allow_mix_precision_fp16",
                       "allow_mix_precision_bf16", "allow_fp32_to_bf16"],
    "op_compiler_cache_mode": ["enable", "disable", "force"], "op_compiler_cache_dir": None,
    "stream_max_parallel_num": None, "hcom_parallel": [True, False], "hcom_multi_mode": None,
    "is_tailing_optimization": [True, False], "op_debug_config": None, "debug_dir": None, "modify_mixlist": None,
    "enable_exception_dump": [0, 1], "enable_small_channel": [True, False], "deterministic": [0, 1],
    "op_precision_mode": None, "graph_exec_timeout": None, "topo_sorting_mode": [0, 1, None],
    "customize_dtypes": None, "overflow_flag": [0, 1], "stream_sync_timeout": None, "event_sync_timeout": None,
    "external_weight": [True, False], "memory_config": None, "jit_compile": [True, False],
    "graph_compiler_cache_dir": None,
}
# distribute/hccl_ops.py's comments: reductions "max", "min", "prod", "sum" ("mean" is hccl.py's own,
# a sum then a division); fusion 0 (none), 1 (by gradient split), 2 (by fusion_id). Where a wrong value
# fails on the real stack (Python, graph build or HCCL) is not in the sources: the double raises.
REDUCTIONS = ("mean", "sum", "max", "min", "prod")
FUSIONS = (0, 1, 2)


class Recorder(object):
    def __init__(self):
        self.calls = []
        self.overflow_steps = set()   # steps (counted by float-status reads) that report overflow

    def record(self, name, *args):
        self.calls.append((name,) + tuple(args))

    def names(self):
        return [c[0] for c in self.calls]


def _has_loss_scale_attr(tensor):
    """Whether the op behind `tensor` carries the attribute the adapter's ControlEdgeOptimizer looks for."""
    op = getattr(tensor, "op", None)
    return op is not None and LOSS_SCALE_ATTR in op.node_def.attr


class _Options(object):
    """NpuConfig: option_base.py's NpuBaseConfig.__setattr__ and OptionValue.value (same repository and
    folder) raise ValueError with these messages for an unknown name or a value outside the list."""

    def __init__(self, device):
        object.__setattr__(self, "_device", device)

    def __setattr__(self, key, value):
        if key not in NPU_OPTIONS:
            raise ValueError("NpuConfig has no option " + key + ", all options " + str(sorted(NPU_OPTIONS)))
        allowed = NPU_OPTIONS[key]
        if isinstance(allowed, list) and value not in allowed:
            raise ValueError("'" + str(value) + "' not in optional list " + str(allowed))
        if self._device.opened is not None:   # the real one ignores it silently: open() has read the options
            raise RuntimeError("global_options().%s set after npu_device.open(): it has no effect" % key)
        self._device.recorder.record("global_options.set", key, value)
        object.__setattr__(self, key, value)


class _Handle(object):
    def __init__(self, device, device_id, workers_num, worker_id):
        self._device, self.device_id, self.workers_num, self.worker_id = device, device_id, workers_num, worker_id

    def is_cluster_worker(self):
        return self.workers_num > 1 and self.workers_num > self.worker_id >= 0

    def as_default(self):
        self._device.recorder.record("as_default")
        self._device.default = self
        return self


class _Distribute(object):
    """distribute/hccl.py: all_reduce and broadcast do nothing unless the default device (as_default) is a
    cluster worker; one process stands in for every card, so the sum over identical cards is this card's value."""

    def __init__(self, device):
        self._device = device

    def _cluster_worker(self, name):
        default = self._device.default
        if default is None or not default.is_cluster_worker():
            self._device.recorder.record(name + " skipped (not an npu cluster worker)")
            return False
        return True

    def all_reduce(self, values, reduction="mean", fusion=1, fusion_id=-1, group="hccl_world_group"):
        if reduction not in REDUCTIONS or fusion not in FUSIONS:
            raise ValueError("all_reduce: reduction %r / fusion %r not among %s / %s" % (reduction, fusion,
                                                                                    REDUCTIONS, FUSIONS))
        if not self._cluster_worker("all_reduce"):
            return values
        listed = isinstance(values, (list, tuple))
        reduced = [None if v is None else tf.identity(v, name="HcomAllReduce") for v in (values if listed else [values])]
        self._device.recorder.record("all_reduce", reduction, len(reduced), fusion,
                                     all(_has_loss_scale_attr(r) for r in reduced if r is not None))
        return reduced if listed else reduced[0]

    def broadcast(self, values, root_rank=0, fusion=2, fusion_id=0, group="hccl_world_group"):
        if not self._cluster_worker("broadcast"):
            return
        values = values if isinstance(values, (list, tuple)) else [values]
        for v in values:
            if not hasattr(v, "assign"):   # hccl.py's _broadcast assigns the result to each value
                raise AttributeError("broadcast: %r is not a variable (has no assign)" % (v,))
        self._device.recorder.record("broadcast", len(values), root_rank)


class _FloatStatusOps(object):
    """gen_npu_ops' float-status ops, with their op signatures (Ascend/tensorflow
    tf_adapter/ops/aicore/npu_mixed_precesion_ops.cc, the same in hicann/tensorflow):
    NpuAllocFloatStatus() -> float[1]; NpuGetFloatStatus(input_float) -> float; NpuClearFloatStatus(float_status)
    -> float; and in the current adapter NpuGetFloatStatusV2() -> int32[8], NpuClearFloatStatusV2() with no output.

    On the device the v1 get writes the overflow flag into the allocated tensor in place, and the adapter
    compares that tensor with clear's (zero) output. TensorFlow tensors cannot be mutated here, so the double
    keeps the allocated tensor at zero and makes get's output (hence clear's, its input) non-zero after an
    overflow: the comparison the target makes comes out as on the device. v2's get returns the flags."""

    def __init__(self, device, v2):
        self._device = device
        self._reads = None
        if v2:
            self.npu_get_float_status_v2 = self._get_v2
            self.npu_clear_float_status_v2 = self._clear_v2

    def start(self):
        self._reads = tf.Variable(0, dtype=tf.int64, trainable=False)

    def _overflowed(self):
        n = self._reads.assign_add(1)
        return tf.reduce_any(tf.equal(n, tf.constant(sorted(self._device.recorder.overflow_steps) or [-1], tf.int64)))

    def _record(self, name, out):
        self._device.recorder.record(name, _has_loss_scale_attr(out))
        return out

    def npu_alloc_float_status(self, name=None):
        return self._record("npu_alloc_float_status", tf.zeros([1], tf.float32))

    def npu_get_float_status(self, input_float, name=None):
        return self._record("npu_get_float_status", tf.where(self._overflowed(), tf.ones_like(input_float),
                                                             tf.identity(input_float)))

    def npu_clear_float_status(self, float_status, name=None):
        return self._record("npu_clear_float_status", tf.identity(float_status))

    def _get_v2(self, name=None):
        return self._record("npu_get_float_status_v2", tf.where(self._overflowed(), tf.ones([8], tf.int32),
                                                                tf.zeros([8], tf.int32)))

    def _clear_v2(self, name=None):
        op = tf.no_op()   # an Operation in a graph, None eagerly
        self._device.recorder.record("npu_clear_float_status_v2", op is not None and LOSS_SCALE_ATTR in op.node_def.attr)
        return op


class FakeNpuDevice(object):
    """Use as `NpuTarget(cfg, npu_module=FakeNpuDevice())`."""

    def __init__(self, adapter="tf2.6", inf_nan=False):
        if adapter not in ADAPTERS:
            raise ValueError("adapter must be one of %s" % (ADAPTERS,))
        self.recorder = Recorder()
        self.opened = None
        self.default = None
        self._options = _Options(self)
        self.distribute = _Distribute(self)
        self.gen_npu_ops = _FloatStatusOps(self, v2=adapter == "current")
        if adapter == "current":   # npu_device.py: is_inf_nan_enabled() is GetDeviceSatMode() == 1
            self.is_inf_nan_enabled = lambda: inf_nan

    def global_options(self):
        self.recorder.record("global_options")
        return self._options

    def open(self, device_id=None):
        """npu_device.py open(): RANK_TABLE_FILE and RANK_ID are checked one after the other, with these messages
        (Ascend/tensorflow; hicann/tensorflow also takes CM_CHIEF_IP instead of a rank table, not modelled)."""
        if device_id is None:
            device_id = int(os.environ.get("ASCEND_DEVICE_ID", "0"))
        if self.opened is not None:
            if self.opened.device_id == device_id:
                return self.opened
            raise RuntimeError("Failed create npu instance on device {} as existed instance on {}"
                               "".format(device_id, [self.opened.device_id]))
        workers = int(os.environ.get("RANK_SIZE", "1"))
        if workers > 1:
            if not os.environ.get("RANK_TABLE_FILE"):
                raise RuntimeError("You must specify a rank table file by set env RANK_TABLE_FILE in distribution mode")
            if not os.environ.get("RANK_ID"):
                raise RuntimeError("You must specify rank id by set env RANK_ID in distribution mode")
        self.recorder.record("open", device_id)
        self.gen_npu_ops.start()
        # the real worker_id is HCCL's get_rank_id(); RANK_ID is what HCCL reads it from
        self.opened = _Handle(self, device_id, workers, int(os.environ.get("RANK_ID", "0")) if workers > 1 else 0)
        return self.opened

    def set_npu_loop_size(self, n):
        self.recorder.record("set_npu_loop_size", n)
