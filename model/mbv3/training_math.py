"""The arithmetic of a training step, as TF-slim's train_image_classifier applies it.

Kept apart from the loop so each piece can be checked against a hand computation: the learning
rate schedule, label-smoothed cross entropy, L2 weight decay on conv weights, the momentum update,
the exponential moving average of the weights and float16 loss scaling.
"""
import math

import tensorflow as tf

from .config import SCHEDULES


def schedule_steps(train_cfg, steps_per_epoch):
    """(total steps, warm-up steps, steps per decay) from a config.TrainSection and the steps in one
    epoch; steps per decay is None unless the schedule is exponential."""
    total = int(train_cfg.steps) if train_cfg.steps else int(math.ceil(train_cfg.epochs * steps_per_epoch))
    warmup = int(round(train_cfg.warmup_epochs * steps_per_epoch))
    per_decay = None
    if train_cfg.lr_schedule == "exponential":
        per_decay = max(1, int(round(train_cfg.epochs_per_decay * steps_per_epoch)))
    return max(total, 1), min(warmup, max(total, 1)), per_decay


def learning_rate(step, base, total_steps, warmup_steps=0, schedule="cosine", steps_per_decay=None,
                  decay_factor=None, min_lr=0.0):
    """LR at `step` (before the update of that step is applied): linear warm-up from 0 to `base` over
    warmup_steps, then cosine from `base` to `min_lr` at total_steps, or slim's staircase exponential
    decay (times decay_factor every steps_per_decay steps), or constant."""
    if schedule not in SCHEDULES:
        raise ValueError("unknown lr schedule %r" % schedule)
    if schedule == "exponential" and (steps_per_decay is None or decay_factor is None):
        raise ValueError("the exponential schedule needs steps_per_decay and decay_factor")
    step = tf.cast(step, tf.float32)
    base = tf.constant(base, tf.float32)
    after = tf.maximum(step - warmup_steps, 0.0)
    if schedule == "cosine":
        progress = tf.minimum(after / float(max(total_steps - warmup_steps, 1)), 1.0)
        lr = min_lr + (base - min_lr) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif schedule == "exponential":
        lr = base * tf.pow(tf.constant(decay_factor, tf.float32), tf.floor(after / float(steps_per_decay)))
    else:
        lr = base
    if warmup_steps > 0:
        lr = tf.where(step < warmup_steps, base * step / float(warmup_steps), lr)
    return lr


def cross_entropy(labels, logits, num_classes, label_smoothing=0.0):
    """Per-example softmax cross entropy with slim's label smoothing:
    target = onehot * (1 - s) + s / num_classes."""
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if label_smoothing:
        onehot = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=tf.cast(logits, tf.float32))


def l2_penalty(variables, weight_decay):
    """slim.l2_regularizer(weight_decay) summed: weight_decay * sum(w^2) / 2 per variable."""
    if not weight_decay or not variables:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


def momentum_update(var, accumulation, grad, lr, momentum):
    """tf.compat.v1.train.MomentumOptimizer (no Nesterov): a = m * a + g; w -= lr * a."""
    accumulation.assign(momentum * accumulation + grad)
    var.assign_sub(lr * accumulation)


def ema_decay(step, decay):
    """tf.train.ExponentialMovingAverage(decay, num_updates=global_step): min(decay, (1 + n) / (10 + n))."""
    step = tf.cast(step, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + step) / (10.0 + step))


def ema_update(shadow, value, decay):
    """shadow -= (1 - decay) * (shadow - value)."""
    shadow.assign_sub((1.0 - decay) * (shadow - tf.cast(value, shadow.dtype)))


class DynamicLossScale(object):
    """float16 loss scaling without Keras: start at 2**15, halve on overflow (skipping that update),
    double after `growth_steps` finite steps. A fixed scale when `fixed` is given."""

    def __init__(self, fixed=None, initial=2.0 ** 15, growth_steps=2000):
        agg = dict(synchronization=tf.VariableSynchronization.ON_WRITE,
                   aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.fixed = fixed
        self.scale = tf.Variable(float(fixed or initial), trainable=False, name="train/loss_scale", **agg)
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="train/loss_scale_good_steps", **agg)
        self.growth_steps = growth_steps

    def variables(self):
        return {"train/loss_scale": self.scale, "train/loss_scale_good_steps": self.good_steps}

    def update(self, finite):
        if self.fixed:
            return

        def grow():
            grown = self.good_steps + 1 >= self.growth_steps
            self.scale.assign(tf.where(grown, self.scale * 2.0, self.scale))
            self.good_steps.assign(tf.where(grown, tf.constant(0, tf.int64), self.good_steps + 1))
            return tf.constant(True)

        def shrink():
            self.scale.assign(tf.maximum(self.scale / 2.0, 1.0))
            self.good_steps.assign(0)
            return tf.constant(True)
        tf.cond(finite, grow, shrink)
