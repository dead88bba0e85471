"""The Ascend 910 target against a recording double of CANN's `npu_device` adapter.

What this proves: the target calls the adapter in its documented order (options, then open and
as_default before the model or any dataset exists; loop size before each sunk loop; HCCL all-reduce
of gradients and a broadcast of the initial weights with several cards; float-status overflow checks
with loss scaling), and the loop trains and checkpoints through it. What it cannot prove: that the
real adapter compiles this graph on a 910, or HCCL and loop sinking behave as documented.
"""
import pytest

import fixed_data
from fakes.fake_npu_device import FakeNpuDevice
from mbv3 import checkpoint, config, net, train, targets
from mbv3.errors import MbV3Error
from mbv3.targets.npu import NpuTarget


@pytest.fixture
def npu_run(tmp_path, monkeypatch):
    def run(*overrides, **kw):
        fake = FakeNpuDevice()
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


def test_single_card_call_order(npu_run):
    rec, summary, lines = npu_run("train.steps=6", "target.steps_per_loop=3", "target.mixed_precision=float16",
                                  "train.batch_size=8")
    names = rec.names()
    assert names[:4] == ["global_options", "global_options.set", "open", "as_default"]
    assert ("global_options.set", "precision_mode", "allow_mix_precision") in rec.calls
    assert names.index("as_default") < names.index("model_created")       # device first, then TF state
    assert ("set_npu_loop_size", 2) in rec.calls                            # min(steps_per_loop, log interval)
    assert "npu_get_float_status" in names and "npu_clear_float_status" in names
    assert "all_reduce" not in names and "broadcast" not in names          # one card: no HCCL
    assert summary["step"] == 6 and checkpoint.Reader(summary["checkpoint"]).step == 6
    assert any("npu: device 0, 1 card(s)" in line for line in lines)


def test_loop_size_follows_iterations_per_loop(npu_run):
    rec, summary, _ = npu_run("train.steps=10", "target.steps_per_loop=5", "log.every_steps=10",
                              "checkpoint.every_steps=10")
    assert [c for c in rec.calls if c[0] == "set_npu_loop_size"] == [("set_npu_loop_size", 5)] * 2
    assert ("global_options.set", "precision_mode", "allow_fp32_to_fp16") in rec.calls


def test_multi_card_uses_hccl(npu_run, monkeypatch, tmp_path):
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    monkeypatch.setenv("RANK_SIZE", "2")
    monkeypatch.setenv("RANK_ID", "0")
    monkeypatch.setenv("RANK_TABLE_FILE", str(table))
    fixed_data.SEEN_CONTEXTS[:] = []
    rec, summary, _ = npu_run("train.steps=4", "train.batch_size=8")
    trainable = len([s for s in net.variable_specs(net.resolve("small", 0.35), 5).values() if s.trainable])
    assert ("all_reduce", "sum", trainable) in rec.calls                   # gradients summed over cards
    broadcasts = [c for c in rec.calls if c[0] == "broadcast"]
    assert len(broadcasts) == 1 and broadcasts[0][2] == 0 and broadcasts[0][1] > trainable
    ctx = fixed_data.SEEN_CONTEXTS[-1]
    assert (ctx.num_input_pipelines, ctx.input_pipeline_id, ctx.get_per_replica_batch_size(8)) == (2, 0, 4)
    assert summary["checkpoint"] is not None                               # rank 0 is the chief


def test_overflow_skips_the_update_and_halves_the_scale(npu_run, monkeypatch):
    original = FakeNpuDevice.__init__

    def overflowing(self):
        original(self)
        self.recorder.overflow_steps = {2, 3}   # the 2nd and 3rd status reads report an overflow
    monkeypatch.setattr(FakeNpuDevice, "__init__", overflowing)
    rec, summary, _ = npu_run("train.steps=4", "target.mixed_precision=float16", "train.batch_size=8")
    reader = checkpoint.Reader(summary["checkpoint"])
    assert reader.get("train/loss_scale") == 2.0 ** 15 / 4
    assert reader.step == 4  # skipped updates still count as steps, as slim's and Keras' loss scaling do


def test_npu_without_the_adapter_is_a_clear_error():
    target = targets.get("npu", {"mixed_precision": "float16"})
    with pytest.raises(MbV3Error, match="needs CANN's TensorFlow adapter"):
        target.setup()
    with pytest.raises(MbV3Error, match="bfloat16 is not available on the Ascend 910"):
        targets.get("npu", {"mixed_precision": "bfloat16"})
    with pytest.raises(MbV3Error, match="unknown target 'tpu'"):
        targets.get("tpu", {})
