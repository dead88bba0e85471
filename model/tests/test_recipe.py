"""The recipe's arithmetic against hand computations, and the shipped recipes against the seed's README."""
import math

import numpy as np
import pytest
import tensorflow as tf

from mbv3 import config, net, recipe
from mbv3.errors import MbV3Error


def test_gpu_recipe_is_the_published_one():
    cfg = config.load("gpu-4p")
    t = cfg.train
    assert (t.batch_size, t.epochs, t.learning_rate, t.lr_schedule, t.warmup_epochs) == (1280, 1200, 0.3, "cosine", 4)
    assert (t.momentum, t.weight_decay, t.label_smoothing, t.ema_decay) == (0.9, 4e-5, 0.1, 0.9999)
    assert cfg.model.num_classes == 1001 and cfg.model.variant == "large"
    assert cfg.target.name == "gpu" and cfg.target.xla and cfg.target.mixed_precision == "float16"
    total, warmup, _ = recipe.schedule_steps(t, 1281167 // 1280)
    assert total == 1200 * 1000 and warmup == 4000  # ~1,200,000 steps, as the seed reports


def test_npu_recipe_continues_the_gpu_schedule():
    cfg = config.load("npu-finetune")
    t = cfg.train
    assert (t.batch_size, t.learning_rate, t.epochs_per_decay) == (640, 0.15, 2.0)
    assert cfg.target.name == "npu" and cfg.target.steps_per_loop == 50 and cfg.target.mixed_precision == "float16"
    assert t.init_from.endswith("model.ckpt-1080000") and t.init_keep_step
    total, _, _ = recipe.schedule_steps(t, 1281167 // 640)
    assert total == 600 * 2001  # 1,200,600: within 0.1% of the GPU run's end, so the cosine position carries over
    assert total - 1080000 == 120600


@pytest.mark.parametrize("step,expected", [
    (0, 0.0),                     # warm-up starts at 0
    (50, 0.3 * 50 / 100),         # linear warm-up
    (100, 0.3),                   # end of warm-up: the base rate
    (550, 0.3 * 0.5 * (1 + math.cos(math.pi * 450 / 900))),  # cosine half way: 0.15
    (1000, 0.0),                  # end
    (2000, 0.0),                  # past the end stays at the floor
])
def test_cosine_schedule_with_warmup(step, expected):
    lr = recipe.learning_rate(step, 0.3, total_steps=1000, warmup_steps=100, schedule="cosine")
    assert float(lr) == pytest.approx(expected, abs=1e-7)


def test_exponential_schedule_is_slims_staircase():
    kw = dict(total_steps=10000, warmup_steps=0, schedule="exponential", steps_per_decay=100, decay_factor=0.9)
    assert float(recipe.learning_rate(99, 0.1, **kw)) == pytest.approx(0.1)
    assert float(recipe.learning_rate(100, 0.1, **kw)) == pytest.approx(0.09)
    assert float(recipe.learning_rate(250, 0.1, **kw)) == pytest.approx(0.1 * 0.81)


def test_label_smoothing_by_hand():
    logits = tf.constant([[2.0, 0.0, -1.0]])
    got = float(recipe.cross_entropy(tf.constant([0]), logits, 3, label_smoothing=0.1)[0])
    log_p = np.log(np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum())
    target = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert got == pytest.approx(-(target * log_p).sum(), rel=1e-6)


def test_weight_decay_is_l2_on_conv_weights_only():
    model = net.MobileNetV3("small", 0.35, num_classes=3)
    regularized = model.regularized_variables
    got = float(recipe.l2_penalty(regularized, 4e-5))
    by_hand = 4e-5 * sum((v.numpy().astype(np.float64) ** 2).sum() / 2 for v in regularized)
    assert got == pytest.approx(by_hand, rel=1e-5)
    names = [n for n, s in model.specs.items() if s.regularized]
    assert all(n.endswith("/weights") for n in names)
    assert len(names) == sum(1 for n in model.specs if n.endswith("/weights"))  # every conv, incl. SE and logits
    assert not any(s.regularized for n, s in model.specs.items() if "depthwise" in n or "BatchNorm" in n or "biases" in n)


def test_momentum_update_by_hand():
    var, acc = tf.Variable([1.0, 2.0]), tf.Variable([0.5, -0.5])
    recipe.momentum_update(var, acc, tf.constant([0.1, 0.2]), lr=0.3, momentum=0.9)
    np.testing.assert_allclose(acc.numpy(), [0.9 * 0.5 + 0.1, 0.9 * -0.5 + 0.2], rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), [1.0 - 0.3 * 0.55, 2.0 - 0.3 * -0.25], rtol=1e-6)


def test_ema_follows_slims_num_updates_rule():
    assert float(recipe.ema_decay(0, 0.9999)) == pytest.approx(0.1)          # (1 + 0) / (10 + 0)
    assert float(recipe.ema_decay(90, 0.9999)) == pytest.approx(91 / 100.0)
    assert float(recipe.ema_decay(10 ** 7, 0.9999)) == pytest.approx(0.9999)  # capped at the decay
    shadow = tf.Variable([0.0])
    recipe.ema_update(shadow, tf.constant([1.0]), 0.75)
    assert shadow.numpy()[0] == pytest.approx(0.25)
    recipe.ema_update(shadow, tf.constant([1.0]), 0.75)
    assert shadow.numpy()[0] == pytest.approx(0.25 + 0.25 * 0.75)


def test_dynamic_loss_scale():
    scale = recipe.DynamicLossScale(initial=1024.0, growth_steps=2)
    scale.update(tf.constant(False))
    assert float(scale.scale.numpy()) == 512.0
    scale.update(tf.constant(True))
    assert float(scale.scale.numpy()) == 512.0
    scale.update(tf.constant(True))
    assert float(scale.scale.numpy()) == 1024.0 and int(scale.good_steps.numpy()) == 0


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
