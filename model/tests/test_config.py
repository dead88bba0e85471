"""Recipes and their resolution (mbv3.config): the shipped recipes against the published runs, typed
keys, keys that apply only with one schedule or target, and saved run configs of older versions."""
import pytest

from mbv3 import config, runinfo, training_math
from mbv3.errors import MbV3Error


def test_gpu_recipe_is_the_published_one():
    cfg = config.load("gpu-4p")
    t = cfg.train
    assert (t.batch_size, t.epochs, t.learning_rate, t.lr_schedule, t.warmup_epochs) == (1280, 1200, 0.3, "cosine", 4)
    assert (t.momentum, t.weight_decay, t.label_smoothing, t.ema_decay) == (0.9, 4e-5, 0.1, 0.9999)
    assert cfg.model.num_classes == 1001 and cfg.model.variant == "large"
    assert cfg.target.name == "gpu" and cfg.target.xla and cfg.target.precision == "mixed_float16"
    total, warmup, _ = training_math.schedule_steps(t, 1281167 // 1280)
    assert total == 1200 * 1000 and warmup == 4000  # ~1,200,000 steps, as the published run took


def test_npu_recipe_continues_the_gpu_schedule():
    cfg = config.load("npu-finetune")
    t = cfg.train
    assert (t.batch_size, t.learning_rate, t.lr_schedule) == (640, 0.15, "cosine")
    assert t.epochs_per_decay is None and t.lr_decay_factor is None  # the exponential schedule's keys
    assert cfg.target.name == "npu" and cfg.target.steps_per_loop == 50 and cfg.target.precision == "mixed_float16"
    assert t.init_from.endswith("model.ckpt-1080000") and t.init_keep_step
    total, _, _ = training_math.schedule_steps(t, 1281167 // 640)
    assert total == 600 * 2001  # 1,200,600: within 0.1% of the GPU run's end, so the cosine position carries over
    assert total - 1080000 == 120600


def test_config_overrides_and_errors(tmp_path):
    cfg = config.load("smoke", ["train.learning_rate=0.5", "target.name=cpu", "train.init_from=null"])
    assert cfg.train.learning_rate == 0.5 and cfg.train.init_from is None
    with pytest.raises(MbV3Error, match=r"unknown config key train.lerning_rate \(did you mean train.learning_rate\?\)"):
        config.load("smoke", ["train.lerning_rate=0.5"])
    with pytest.raises(MbV3Error, match="unknown config key trian"):
        config.load("smoke", ["trian.steps=1"])
    with pytest.raises(MbV3Error, match="no recipe 'nope'"):
        config.load("nope")
    with pytest.raises(MbV3Error, match="--set takes section.key=value"):
        config.load("smoke", ["steps=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: [1\n")
    with pytest.raises(MbV3Error, match="not valid YAML"):
        config.load(str(bad))
    path = cfg.save(str(tmp_path))
    again = config.load_saved(str(tmp_path))
    assert again.to_dict() == cfg.to_dict() and path.endswith("config.yaml")


def test_values_are_typed_and_choices_checked():
    cfg = config.load("smoke", ["train.weight_decay=4e-5", "train.epochs=3", "train.batch_size=16.0"])
    assert cfg.train.weight_decay == 4e-5 and cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)
    assert cfg.train.batch_size == 16 and isinstance(cfg.train.batch_size, int)
    for override, message in [
            ("train.batch_size=abc", "--set train.batch_size=abc: train.batch_size must be an integer, got 'abc'"),
            ("train.batch_size=true", "train.batch_size must be an integer, got True"),
            ("data.deterministic=1", "data.deterministic must be true or false, got 1"),
            ("train.steps=2.5", "train.steps must be an integer or null, got 2.5"),
            ("train.lr_schedule=cosin", "train.lr_schedule must be one of cosine, exponential, constant, got 'cosin'"),
            ("target.name=tpu", "target.name must be one of cpu, gpu, npu, got 'tpu'"),
            ("data.crop_area_min=0", "data.crop_area_min must be in (0, 1], got 0.0"),
            ("data.crop_area_min=1.5", "data.crop_area_min must be in (0, 1], got 1.5"),
            ("target.precision=float16", "target.precision must be one of float32, mixed_float16, mixed_bfloat16, "
                                         "float16_matmul, got 'float16'")]:
        with pytest.raises(MbV3Error) as caught:
            config.load("smoke", [override])
        assert message in str(caught.value), (override, str(caught.value))


def test_keys_nothing_reads_are_gone():
    with pytest.raises(MbV3Error, match=r"unknown config key train.optimizer \(the update is always momentum's"):
        config.load("smoke", ["train.optimizer=momentum"])
    with pytest.raises(MbV3Error, match="unknown config key data.eval_split"):
        config.load("smoke", ["data.eval_split=validation"])
    with pytest.raises(MbV3Error, match=r"unknown config key target.mixed_precision \(renamed target.precision: "
                                        r"float32, mixed_float16, mixed_bfloat16, float16_matmul\)"):
        config.load("smoke", ["target.mixed_precision=float16"])


def test_schedule_and_target_keys_apply_only_with_their_choice(tmp_path):
    cosine = config.load("smoke")
    assert cosine.train.min_learning_rate == 0.0 and cosine.train.lr_decay_factor is None
    assert cosine.train.epochs_per_decay is None and cosine.target.loss_scale is None and cosine.target.cpu_replicas == 1
    assert "lr_decay_factor" not in cosine.to_dict()["train"] and "loss_scale" not in cosine.to_dict()["target"]
    assert "lr_decay_factor" not in cosine.dump() and "min_learning_rate" in cosine.dump()
    exponential = config.load("smoke", ["train.lr_schedule=exponential", "train.lr_decay_factor=0.9"])
    t = exponential.train
    assert (t.lr_decay_factor, t.epochs_per_decay, t.min_learning_rate) == (0.9, 1.0, None)
    assert training_math.schedule_steps(t, 10)[2] == 10
    with pytest.raises(MbV3Error, match="--set train.lr_decay_factor=0.9: train.lr_decay_factor applies only with "
                                        "train.lr_schedule exponential, and train.lr_schedule is cosine; leave it out"):
        config.load("smoke", ["train.lr_decay_factor=0.9"])
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("train:\n  lr_schedule: exponential\n  min_learning_rate: 0.001\n")
    with pytest.raises(MbV3Error, match="^%s: train.min_learning_rate applies only with train.lr_schedule cosine, and "
                                        "train.lr_schedule is exponential" % recipe):
        config.load(str(recipe))
    with pytest.raises(MbV3Error, match="target.cpu_replicas applies only with target.name cpu, and target.name is npu"):
        config.load("smoke", ["target.name=npu", "target.cpu_replicas=2"])
    with pytest.raises(MbV3Error, match="target.loss_scale applies only with target.precision mixed_float16"):
        config.load("smoke", ["target.loss_scale=128"])
    assert config.load("smoke", ["target.precision=mixed_float16", "target.loss_scale=128"]).target.loss_scale == 128.0
    assert config.load("smoke", ["target.precision=mixed_float16"]).target.loss_scale == "dynamic"
    with pytest.raises(MbV3Error, match="target.loss_scale must be dynamic or a number, got 'static'"):
        config.load("smoke", ["target.precision=mixed_float16", "target.loss_scale=static"])


# config.yaml as older versions of mbv3 saved it: with train.optimizer and data.eval_split, which are not
# settings now, target.mixed_precision, renamed target.precision, and every schedule's keys whichever
# schedule ran
OLDER_SAVED = """# resolved from /src/model/mbv3/configs/smoke.yaml
model: {variant: small, multiplier: 0.35, num_classes: null, bn_decay: 0.9, bn_epsilon: 0.001, dropout_keep: 0.8}
data: {image_size: 48, train_split: train, eval_split: validation, train_examples: null, shuffle_buffer: 100,
       deterministic: false, seed: null}
train: {batch_size: 8, epochs: 1.0, steps: 20, optimizer: momentum, momentum: 0.9, learning_rate: 0.05,
        lr_schedule: cosine, warmup_epochs: 0, lr_decay_factor: 0.99, epochs_per_decay: 1.0, min_learning_rate: 0.0,
        weight_decay: 4.0e-05, label_smoothing: 0.1, ema_decay: 0.9, init_from: null, init_keep_step: false,
        reinit_classifier: false, seed: 0}
target: {name: cpu, xla: false, mixed_precision: none, steps_per_loop: 1, cpu_replicas: 1, loss_scale: dynamic}
checkpoint: {every_steps: 5, keep: 3}
log: {every_steps: 5, summaries: false}
"""


def test_a_run_saved_by_an_older_version_still_loads_with_one_warning(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(OLDER_SAVED)
    lines = []
    cfg = config.load_saved(str(tmp_path), log=lines.append)
    assert lines == ["warning: %s: ignoring data.eval_split, train.optimizer, not settings of this mbv3 version; "
                     "read target.mixed_precision none as target.precision float32 (renamed)" % (tmp_path / "config.yaml")]
    assert cfg.target.precision == "float32"
    assert cfg.data.image_size == 48 and cfg.model.multiplier == 0.35 and cfg.train.lr_decay_factor is None
    assert cfg.train.min_learning_rate == 0.0 and cfg.target.loss_scale is None
    assert runinfo.image_size(str(tmp_path / "model.ckpt-20")) == 48   # what export and eval read
    assert capsys.readouterr().err.splitlines() == lines
    # a recipe is held to the current keys
    with pytest.raises(MbV3Error, match=r"unknown config key data.eval_split \(`mbv3 eval --split` chooses"):
        config.load(str(tmp_path / "config.yaml"))


@pytest.mark.parametrize("name, old, new", [
    ("cpu", "none", "float32"), ("gpu", "float16", "mixed_float16"), ("cpu", "bfloat16", "mixed_bfloat16"),
    ("npu", "none", "float16_matmul"),   # what `none` ran on the NPU: precision_mode allow_fp32_to_fp16
    ("npu", "float16", "mixed_float16")])
def test_a_saved_mixed_precision_is_read_as_the_precision_that_ran(tmp_path, name, old, new):
    saved = OLDER_SAVED.replace("name: cpu, xla: false, mixed_precision: none, steps_per_loop: 1, cpu_replicas: 1",
                                "name: %s, xla: false, mixed_precision: %s, steps_per_loop: 1" % (name, old))
    (tmp_path / "config.yaml").write_text(saved)
    lines = []
    cfg = config.load_saved(str(tmp_path), log=lines.append)
    assert (cfg.target.name, cfg.target.precision) == (name, new)
    assert cfg.target.loss_scale == ("dynamic" if new == "mixed_float16" else None)
    assert len(lines) == 1 and "read target.mixed_precision %s as target.precision %s (renamed)" % (old, new) in lines[0]
