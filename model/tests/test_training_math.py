"""The training step's arithmetic (mbv3.training_math) against hand computations."""
import math

import numpy as np
import pytest
import tensorflow as tf

from mbv3 import net, training_math


@pytest.mark.parametrize("step,expected", [
    (0, 0.0),                     # warm-up starts at 0
    (50, 0.3 * 50 / 100),         # linear warm-up
    (100, 0.3),                   # end of warm-up: the base rate
    (550, 0.3 * 0.5 * (1 + math.cos(math.pi * 450 / 900))),  # cosine half way: 0.15
    (1000, 0.0),                  # end
    (2000, 0.0),                  # past the end stays at the floor
])
def test_cosine_schedule_with_warmup(step, expected):
    lr = training_math.learning_rate(step, 0.3, total_steps=1000, warmup_steps=100, schedule="cosine")
    assert float(lr) == pytest.approx(expected, abs=1e-7)


def test_exponential_schedule_is_slims_staircase():
    kw = dict(total_steps=10000, warmup_steps=0, schedule="exponential", steps_per_decay=100, decay_factor=0.9)
    assert float(training_math.learning_rate(99, 0.1, **kw)) == pytest.approx(0.1)
    assert float(training_math.learning_rate(100, 0.1, **kw)) == pytest.approx(0.09)
    assert float(training_math.learning_rate(250, 0.1, **kw)) == pytest.approx(0.1 * 0.81)


def test_label_smoothing_by_hand():
    logits = tf.constant([[2.0, 0.0, -1.0]])
    got = float(training_math.cross_entropy(tf.constant([0]), logits, 3, label_smoothing=0.1)[0])
    log_p = np.log(np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum())
    target = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert got == pytest.approx(-(target * log_p).sum(), rel=1e-6)


def test_weight_decay_is_l2_on_conv_weights_only():
    model = net.MobileNetV3("small", 0.35, num_classes=3)
    regularized = model.regularized_variables
    got = float(training_math.l2_penalty(regularized, 4e-5))
    by_hand = 4e-5 * sum((v.numpy().astype(np.float64) ** 2).sum() / 2 for v in regularized)
    assert got == pytest.approx(by_hand, rel=1e-5)
    names = [n for n, s in model.specs.items() if s.regularized]
    assert all(n.endswith("/weights") for n in names)
    assert len(names) == sum(1 for n in model.specs if n.endswith("/weights"))  # every conv, incl. SE and logits
    assert not any(s.regularized for n, s in model.specs.items() if "depthwise" in n or "BatchNorm" in n or "biases" in n)


def test_momentum_update_by_hand():
    var, acc = tf.Variable([1.0, 2.0]), tf.Variable([0.5, -0.5])
    training_math.momentum_update(var, acc, tf.constant([0.1, 0.2]), lr=0.3, momentum=0.9)
    np.testing.assert_allclose(acc.numpy(), [0.9 * 0.5 + 0.1, 0.9 * -0.5 + 0.2], rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), [1.0 - 0.3 * 0.55, 2.0 - 0.3 * -0.25], rtol=1e-6)


def test_ema_follows_slims_num_updates_rule():
    assert float(training_math.ema_decay(0, 0.9999)) == pytest.approx(0.1)          # (1 + 0) / (10 + 0)
    assert float(training_math.ema_decay(90, 0.9999)) == pytest.approx(91 / 100.0)
    assert float(training_math.ema_decay(10 ** 7, 0.9999)) == pytest.approx(0.9999)  # capped at the decay
    shadow = tf.Variable([0.0])
    training_math.ema_update(shadow, tf.constant([1.0]), 0.75)
    assert shadow.numpy()[0] == pytest.approx(0.25)
    training_math.ema_update(shadow, tf.constant([1.0]), 0.75)
    assert shadow.numpy()[0] == pytest.approx(0.25 + 0.25 * 0.75)


def test_dynamic_loss_scale():
    scale = training_math.DynamicLossScale(initial=1024.0, growth_steps=2)
    scale.update(tf.constant(False))
    assert float(scale.scale.numpy()) == 512.0
    scale.update(tf.constant(True))
    assert float(scale.scale.numpy()) == 512.0
    scale.update(tf.constant(True))
    assert float(scale.scale.numpy()) == 1024.0 and int(scale.good_steps.numpy()) == 0
