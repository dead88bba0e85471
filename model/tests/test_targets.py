"""The Ascend NPU target against a recording double of CANN's `npu_device` adapter (tests/fakes).

What this proves: the target calls the adapter in its documented order (options, then open and
as_default before the model or any dataset exists; loop size before each sunk loop; HCCL all-reduce
of gradients and a broadcast of the initial weights with several cards), with option names and values
the adapter's NpuConfig accepts; that the overflow check is built as the adapter's own loss-scale
optimizer builds it (inside the `_npu_loss_scale` attribute scope, all-reduced with fusion 0), with the
float-status ops the installed adapter has, or ordinary loss scaling in INF_NAN mode; and that the loop
trains and checkpoints through it. What it cannot prove: that the real adapter compiles this graph on
a 910, or HCCL and loop sinking behave as documented.
"""
import numpy as np
import pytest
import tensorflow as tf

import fixed_data
from fakes.fake_npu_device import FakeNpuDevice
from mbv3 import checkpoint, config, net, specs, train, targets
from mbv3.errors import MbV3Error
from mbv3.targets.npu import NpuTarget


@pytest.fixture
def npu_run(tmp_path, monkeypatch):
    def run(*overrides, **kw):
        fake = kw.get("fake") or FakeNpuDevice()
        cfg = config.load("smoke", ["target.name=npu", "train.ema_decay=0.9", "log.every_steps=2"] + list(overrides))
        monkeypatch.setattr(train, "data", fixed_data.make(per_replica_batch=4, size=32))
        original = net.MobileNetV3.__init__

        def recording_init(self, *a, **k):
            fake.recorder.record("model_created")
            original(self, *a, **k)
        monkeypatch.setattr(net.MobileNetV3, "__init__", recording_init)
        target = NpuTarget(cfg.target.to_dict(), npu_module=fake)
        lines = []
        summary = train.Trainer(cfg, "unused", str(tmp_path / kw.get("name", "run")), log=lines.append,
                                target=target).run()
        return fake.recorder, summary, lines
    return run


@pytest.fixture
def two_cards(monkeypatch, tmp_path):
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    monkeypatch.setenv("RANK_SIZE", "2")
    monkeypatch.setenv("RANK_ID", "0")
    monkeypatch.setenv("RANK_TABLE_FILE", str(table))


def _trainable():
    return len([s for s in specs.variable_specs(specs.resolve("small", 0.35), 5).values() if s.trainable])


def test_single_card_call_order(npu_run):
    rec, summary, lines = npu_run("train.steps=6", "target.steps_per_loop=3", "target.precision=mixed_float16",
                                  "train.batch_size=8")
    names = rec.names()
    assert names[:4] == ["global_options", "global_options.set", "open", "as_default"]
    assert ("global_options.set", "precision_mode", "allow_mix_precision") in rec.calls
    assert names.index("as_default") < names.index("model_created")       # device first, then TF state
    assert ("set_npu_loop_size", 2) in rec.calls                            # min(steps_per_loop, log interval)
    assert "npu_get_float_status" in names and "npu_clear_float_status" in names
    assert "all_reduce" not in names and "broadcast" not in names          # one card: no HCCL
    assert summary["step"] == 6 and checkpoint.Reader(summary["checkpoint"]).step == 6
    assert any("npu: device 0, 1 card(s)" in line and "precision mixed_float16 (precision_mode allow_mix_precision)"
               in line and "npu_get_float_status (v1)" in line for line in lines), lines


@pytest.mark.parametrize("precision, mode", [("float32", "must_keep_origin_dtype"),
                                             ("float16_matmul", "allow_fp32_to_fp16")])
def test_precisions_are_the_precision_modes_they_name(npu_run, precision, mode):
    rec, summary, lines = npu_run("train.steps=10", "target.steps_per_loop=5", "log.every_steps=10",
                                  "checkpoint.every_steps=10", "target.precision=" + precision)
    assert [c for c in rec.calls if c[0] == "set_npu_loop_size"] == [("set_npu_loop_size", 5)] * 2
    assert [c for c in rec.calls if c[0] == "global_options.set"] == [("global_options.set", "precision_mode", mode)]
    assert not [n for n in rec.names() if "float_status" in n]               # no loss scaling, no overflow check
    assert any("precision %s (precision_mode %s)" % (precision, mode) in line for line in lines)


def test_multi_card_uses_hccl(npu_run, two_cards):
    fixed_data.SEEN_CONTEXTS[:] = []
    rec, summary, _ = npu_run("train.steps=4", "train.batch_size=8")
    gradients = [c for c in rec.calls if c[0] == "all_reduce"]
    assert gradients and set(gradients) == {("all_reduce", "sum", _trainable(), 1, False)}   # hccl.py's default fusion
    broadcasts = [c for c in rec.calls if c[0] == "broadcast"]
    assert len(broadcasts) == 1 and broadcasts[0][2] == 0 and broadcasts[0][1] > _trainable()
    ctx = fixed_data.SEEN_CONTEXTS[-1]
    assert (ctx.num_input_pipelines, ctx.input_pipeline_id, ctx.get_per_replica_batch_size(8)) == (2, 0, 4)
    assert summary["checkpoint"] is not None                               # rank 0 is the chief


@pytest.mark.parametrize("adapter, get_op, clear_op", [
    ("tf2.6", "npu_get_float_status", "npu_clear_float_status"),
    ("current", "npu_get_float_status_v2", "npu_clear_float_status_v2")])
def test_multi_card_overflow_check_is_built_as_the_adapter_builds_it(npu_run, two_cards, adapter, get_op, clear_op):
    """npu_loss_scale_optimizer.py: the float-status ops and their all-reduce inside the `_npu_loss_scale`
    attribute scope, the all-reduce with fusion 0; the v2 ops where the adapter has them."""
    rec, summary, lines = npu_run("train.steps=2", "train.batch_size=8", "log.every_steps=1",
                                  "target.precision=mixed_float16", fake=FakeNpuDevice(adapter=adapter))
    status = [c for c in rec.calls if c[0] == "all_reduce" and c[2] == 1]
    assert status and set(status) == {("all_reduce", "sum", 1, 0, True)}, rec.calls
    ops = [c for c in rec.calls if c[0] in (get_op, clear_op, "npu_alloc_float_status")]
    assert {c[0] for c in ops} == ({get_op, clear_op} | ({"npu_alloc_float_status"} if adapter == "tf2.6" else set()))
    assert all(c[1] for c in ops), ops                                     # every one in the attribute scope
    assert ("all_reduce", "sum", _trainable(), 1, False) in rec.calls      # the gradients: fused, outside it
    assert summary["step"] == 2
    assert any((get_op if adapter == "current" else "npu_get_float_status (v1)") in line for line in lines)


@pytest.mark.parametrize("adapter", ["tf2.6", "current"])
def test_overflow_skips_the_update_and_halves_the_scale(npu_run, adapter):
    fake = FakeNpuDevice(adapter=adapter)
    fake.recorder.overflow_steps = {2, 3}   # the 2nd and 3rd status reads report an overflow
    rec, summary, _ = npu_run("train.steps=4", "target.precision=mixed_float16", "train.batch_size=8", fake=fake)
    reader = checkpoint.Reader(summary["checkpoint"])
    assert reader.get("train/loss_scale") == 2.0 ** 15 / 4
    assert reader.step == 4  # skipped updates still count as steps, as slim's and Keras' loss scaling do


def test_inf_nan_mode_uses_ordinary_loss_scaling(npu_run):
    """A current adapter on a device in INF_NAN mode (the Atlas A2 default): NpuLossScaleOptimizer falls back
    to the Keras optimizer there, so overflow is inf/NaN in the gradients and no float-status op is built."""
    fake = FakeNpuDevice(adapter="current", inf_nan=True)
    rec, summary, lines = npu_run("train.steps=2", "target.precision=mixed_float16", "train.batch_size=8", fake=fake)
    assert not [n for n in rec.names() if "float_status" in n]
    assert any("INF_NAN mode: ordinary loss scaling" in line for line in lines), lines
    target = NpuTarget({"precision": "mixed_float16"}, npu_module=FakeNpuDevice(adapter="current", inf_nan=True))
    target.setup()
    assert bool(target.all_finite([tf.constant([1.0, 2.0])]))
    assert not bool(target.all_finite([tf.constant([1.0]), tf.constant([np.inf])]))
    assert not bool(target.all_finite([tf.constant([np.nan])]))


def test_the_double_refuses_what_the_adapter_refuses(monkeypatch, tmp_path):
    fake = FakeNpuDevice()
    with pytest.raises(ValueError, match="NpuConfig has no option precison_mode"):
        fake.global_options().precison_mode = "allow_mix_precision"
    with pytest.raises(ValueError, match="'float32' not in optional list"):
        fake.global_options().precision_mode = "float32"
    monkeypatch.setenv("RANK_SIZE", "2")
    monkeypatch.delenv("RANK_TABLE_FILE", raising=False)
    monkeypatch.setenv("RANK_ID", "0")
    with pytest.raises(RuntimeError, match="specify a rank table file by set env RANK_TABLE_FILE"):
        fake.open()
    monkeypatch.setenv("RANK_TABLE_FILE", str(tmp_path / "table.json"))
    monkeypatch.delenv("RANK_ID")
    with pytest.raises(RuntimeError, match="specify rank id by set env RANK_ID"):
        fake.open()
    monkeypatch.setenv("RANK_ID", "1")
    handle = fake.open(3)
    assert (handle.workers_num, handle.worker_id) == (2, 1) and fake.open(3) is handle
    with pytest.raises(RuntimeError, match="Failed create npu instance on device 0 as existed instance on"):
        fake.open(0)
    with pytest.raises(RuntimeError, match="set after npu_device.open"):   # stricter than the adapter (say so)
        fake.global_options().precision_mode = "allow_mix_precision"
    with pytest.raises(ValueError, match="reduction 'avg'"):
        fake.distribute.all_reduce([tf.constant(1.0)], "avg")


def test_npu_errors_are_clear():
    target = targets.get("npu", {"precision": "mixed_float16"})
    with pytest.raises(MbV3Error, match="needs CANN's TensorFlow adapter"):
        target.setup()
    with pytest.raises(MbV3Error, match="target npu: target.precision mixed_bfloat16 is not offered: CANN's "
                                        "allow_mix_precision_bf16 exists only on the Atlas A2"):
        targets.get("npu", {"precision": "mixed_bfloat16"})
    with pytest.raises(MbV3Error, match="target cpu: target.precision float16_matmul is not offered: it is the "
                                        "Ascend NPU's precision_mode allow_fp32_to_fp16"):
        targets.get("cpu", {"precision": "float16_matmul"})
    with pytest.raises(MbV3Error, match="unknown target 'tpu'"):
        targets.get("tpu", {})
