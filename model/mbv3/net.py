"""MobileNetV3 (Howard et al., 2019) in plain TensorFlow ops with TF-slim's variable names.

The architecture is data (mbv3.specs); one function, `forward()`, runs any resolved spec on any
mapping of name -> tensor (tf.Variables while training, NumPy constants when freezing).
Keras and tf-slim are left out so the checkpoint names are slim's exactly and the graph holds only
ops that TensorFlow 1.15 and 2.6 (CANN's adapter, ATC's parser) know; every API used exists in TF 2.6.
"""
import collections
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from .specs import (
    BETA,
    DEFAULT_NUM_CLASSES,
    GAMMA,
    HSWISH,
    LOGITS_SCOPE,
    MEAN,
    MOVING_KINDS,
    VARIANCE,
    initial_value,
    resolve,
    variable_specs,
)


# --- the forward pass -------------------------------------------------------------------------

# A scalar, as slim: a shape-[1] constant makes Grappler fuse Conv2D+BiasAdd+Add into a oneDNN
# primitive that rejects the broadcast (inference-mode tf.functions then fail on CPU).
# export.to_onnx reshapes it for tf2onnx, whose transpose optimizer cannot handle scalar addends.
_THREE = np.float32(3)


def hard_swish(x):
    return x * tf.nn.relu6(x + _THREE) * np.float32(1. / 6.)


def hard_sigmoid(x):
    """slim's squeeze-excite gate, constant 0.16667 included (not 1/6)."""
    return tf.nn.relu6(x + _THREE) * np.float32(0.16667)


def _activation(name, x):
    return hard_swish(x) if name == HSWISH else tf.nn.relu(x)


@dataclass
class Numerics:
    """Numerics of the network that are not architecture (training takes them from the config's model section)."""
    bn_decay: float = 0.997
    bn_epsilon: float = 0.001
    dropout_keep: float = 0.8
    compute_dtype: str = "float32"


def forward(resolved, params, images, training=False, numerics=None, num_classes=DEFAULT_NUM_CLASSES,
            bn_updates=None, dropout_seed=None):
    """Logits [N, num_classes] for NHWC images in [-1, 1].

    `params` maps slim names to tensors. With training=True batch norm normalises with the batch's
    statistics and, if `bn_updates` is a dict, records there `name -> batch statistic` for each moving
    mean/variance so the caller can apply slim's moving-average update where it owns the variables.
    """
    numerics = numerics or Numerics()
    dtype = tf.as_dtype(numerics.compute_dtype)

    def weight(name):
        w = params[name]
        return tf.cast(w, dtype) if w.dtype != dtype else w

    def batch_norm(x, scope):
        bn = scope + "/BatchNorm/"
        if training:
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                x, params[bn + GAMMA], params[bn + BETA], epsilon=numerics.bn_epsilon, is_training=True)
            if bn_updates is not None:
                bn_updates[bn + MEAN] = mean
                bn_updates[bn + VARIANCE] = var   # fused BN's variance is Bessel-corrected, as slim's
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, params[bn + GAMMA], params[bn + BETA], params[bn + MEAN], params[bn + VARIANCE],
            epsilon=numerics.bn_epsilon, is_training=False)
        return y

    def conv(x, scope, stride=1, batch_norm_=True, act=None, depthwise=False):
        if depthwise:
            x = tf.nn.depthwise_conv2d(x, weight(scope + "/depthwise_weights"), [1, stride, stride, 1], "SAME")
        else:
            x = tf.nn.conv2d(x, weight(scope + "/weights"), [1, stride, stride, 1], "SAME")
        if batch_norm_:
            x = batch_norm(x, scope)
        else:
            x = tf.nn.bias_add(x, weight(scope + "/biases"))
        return _activation(act, x) if act else x

    x = tf.cast(images, dtype)
    for r in resolved:
        layer = r.layer
        if layer.kind == "conv":
            x = conv(x, r.scope, layer.stride, layer.batch_norm, layer.act)
        elif layer.kind == "pool":
            x = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        else:
            shortcut = x
            if r.inner > r.in_ch:
                x = conv(x, r.scope + "/expand", act=layer.act)
            x = conv(x, r.scope + "/depthwise", layer.stride, act=layer.act, depthwise=True)
            if layer.se:
                se = r.scope + "/squeeze_excite"
                s = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
                s = tf.nn.relu(conv(s, se + "/Conv", batch_norm_=False))
                s = hard_sigmoid(conv(s, se + "/Conv_1", batch_norm_=False))
                x = x * s
            x = conv(x, r.scope + "/project")
            if layer.stride == 1 and r.in_ch == r.out_ch:
                x = x + shortcut
    if training and numerics.dropout_keep < 1:
        x = tf.nn.dropout(x, rate=1 - numerics.dropout_keep, seed=dropout_seed)
    x = conv(x, LOGITS_SCOPE, batch_norm_=False)
    return tf.cast(tf.squeeze(x, [1, 2]), tf.float32)


class MobileNetV3(object):
    """The network's variables (keyed by slim name) plus its forward pass.

    Variables are created on construction, so build it inside a tf.distribute strategy's scope when
    training on several devices. Batch-norm moving statistics are ON_READ/MEAN variables, the
    arrangement tf.distribute expects for per-replica statistics; the rest take the first replica's
    update, which after the gradient all-reduce is every replica's.
    """

    def __init__(self, variant="large", multiplier=1.0, num_classes=DEFAULT_NUM_CLASSES, numerics=None, seed=0):
        self.variant, self.multiplier, self.num_classes = variant, multiplier, num_classes
        self.numerics = numerics or Numerics()
        self.resolved = resolve(variant, multiplier)
        self.specs = variable_specs(self.resolved, num_classes)
        rng = np.random.default_rng(seed)
        self.variables = collections.OrderedDict()
        for name, spec in self.specs.items():
            if spec.kind in MOVING_KINDS:  # per-replica statistics, averaged when read
                extra = dict(synchronization=tf.VariableSynchronization.ON_READ,
                             aggregation=tf.VariableAggregation.MEAN)
            else:  # every replica applies the same all-reduced update
                extra = dict(aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.variables[name] = tf.Variable(initial_value(spec, rng), trainable=spec.trainable,
                                               name=name, **extra)

    @property
    def trainable_variables(self):
        return [v for n, v in self.variables.items() if self.specs[n].trainable]

    @property
    def regularized_variables(self):
        return [v for n, v in self.variables.items() if self.specs[n].regularized]

    def __call__(self, images, training=False, dropout_seed=None):
        updates = {} if training else None
        logits = forward(self.resolved, self.variables, images, training, self.numerics, self.num_classes,
                         bn_updates=updates, dropout_seed=dropout_seed)
        if updates:
            decay = self.numerics.bn_decay
            for name, value in updates.items():
                var = self.variables[name]
                var.assign_sub((var - tf.cast(value, var.dtype)) * (1 - decay))
        return logits
