"""MobileNetV3 (Howard et al., 2019) in plain TensorFlow ops with TF-slim's variable names.

The architecture is data: each variant is a tuple of `Layer` rows (mirroring slim's
`mobilenet_v3.V3_LARGE` op list), `resolve()` turns a spec plus a depth multiplier into concrete
layers with slim scope names and channel counts, and one function, `forward()`, runs any resolved
spec on any mapping of name -> tensor (tf.Variables while training, NumPy constants when freezing).
Keras and tf-slim are deliberately absent (see DESIGN.md); every API used exists in TF 2.6.
"""
import collections
from dataclasses import dataclass, replace

import numpy as np
import tensorflow as tf

SCOPE = "MobilenetV3"
LOGITS_SCOPE = SCOPE + "/Logits/Conv2d_1c_1x1"
DEFAULT_NUM_CLASSES = 1001
RELU, HSWISH = "relu", "hard_swish"


@dataclass(frozen=True)
class Layer:
    """One row of a spec: a plain conv, an inverted-residual block, or the global pool."""
    kind: str                 # "conv" | "block" | "pool"
    filters: int = 0
    kernel: int = 1
    stride: int = 1
    expansion: float = 1.0    # blocks: inner width = make_divisible(input * expansion)
    se: bool = False          # blocks: squeeze-excite after the depthwise conv
    act: str = RELU
    batch_norm: bool = True   # convs: BatchNorm, else biases (slim's normalizer_fn=None)
    scaled: bool = True       # False: width ignores the depth multiplier (finegrain mode)


def _conv(filters, kernel=1, stride=1, act=RELU, batch_norm=True, scaled=True):
    return Layer("conv", filters, kernel, stride, act=act, batch_norm=batch_norm, scaled=scaled)


def _block(kernel, expansion, filters, stride=1, se=False, act=RELU):
    return Layer("block", filters, kernel, stride, expansion, se, act)


_POOL = Layer("pool")

# slim mobilenet_v3.V3_LARGE: mbv3_op(ef, n, k, s, act) rows; "se" rows are mbv3_op_se.
V3_LARGE = (
    _conv(16, 3, 2, act=HSWISH),
    _block(3, 1, 16),
    _block(3, 4, 24, 2),
    _block(3, 3, 24),
    _block(5, 3, 40, 2, se=True),
    _block(5, 3, 40, se=True),
    _block(5, 3, 40, se=True),
    _block(3, 6, 80, 2, act=HSWISH),
    _block(3, 2.5, 80, act=HSWISH),
    _block(3, 184 / 80., 80, act=HSWISH),
    _block(3, 184 / 80., 80, act=HSWISH),
    _block(3, 6, 112, se=True, act=HSWISH),
    _block(3, 6, 112, se=True, act=HSWISH),
    _block(5, 6, 160, 2, se=True, act=HSWISH),
    _block(5, 6, 160, se=True, act=HSWISH),
    _block(5, 6, 160, se=True, act=HSWISH),
    _conv(960, 1, act=HSWISH),
    _POOL,
    _conv(1280, 1, act=HSWISH, batch_norm=False, scaled=False),
)

V3_SMALL = (
    _conv(16, 3, 2, act=HSWISH),
    _block(3, 1, 16, 2, se=True),
    _block(3, 72. / 16, 24, 2),
    _block(3, 88. / 24, 24),
    _block(5, 4, 40, 2, se=True, act=HSWISH),
    _block(5, 6, 40, se=True, act=HSWISH),
    _block(5, 6, 40, se=True, act=HSWISH),
    _block(5, 3, 48, se=True, act=HSWISH),
    _block(5, 3, 48, se=True, act=HSWISH),
    _block(5, 6, 96, 2, se=True, act=HSWISH),
    _block(5, 6, 96, se=True, act=HSWISH),
    _block(5, 6, 96, se=True, act=HSWISH),
    _conv(576, 1, act=HSWISH),
    _POOL,
    _conv(1024, 1, act=HSWISH, batch_norm=False, scaled=False),
)


def minimalistic(spec):
    """slim's *_MINIMALISTIC variants: ReLU only, no squeeze-excite, 3x3 depthwise kernels."""
    out = []
    for layer in spec:
        if layer.kind == "block":
            layer = replace(layer, kernel=3, se=False)
        out.append(replace(layer, act=RELU))
    return tuple(out)


VARIANTS = collections.OrderedDict([
    ("large", V3_LARGE),
    ("small", V3_SMALL),
    ("large_minimalistic", minimalistic(V3_LARGE)),
    ("small_minimalistic", minimalistic(V3_SMALL)),
])


def make_divisible(value, divisor=8, min_value=None):
    """slim's _make_divisible: round to a multiple of divisor, never below 90% of value."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclass(frozen=True)
class Resolved:
    """A layer with its slim scope and concrete widths."""
    layer: Layer
    scope: str
    in_ch: int
    out_ch: int
    inner: int = 0      # blocks: expanded width (== in_ch means no expand conv)
    squeeze: int = 0    # blocks with SE: squeeze width


def spec_for(variant):
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError("unknown variant %r (choose from %s)" % (variant, ", ".join(VARIANTS)))


def resolve(variant="large", multiplier=1.0, in_channels=3):
    """Concrete layers with slim's scope names (Conv, Conv_1, expanded_conv, expanded_conv_1, ...)."""
    counters = collections.Counter()
    resolved = []
    channels = in_channels
    for layer in spec_for(variant):
        base = {"conv": "Conv", "block": "expanded_conv", "pool": "AvgPool2D"}[layer.kind]
        n = counters[base]
        counters[base] += 1
        scope = "%s/%s" % (SCOPE, base if n == 0 else "%s_%d" % (base, n))
        if layer.kind == "pool":
            resolved.append(Resolved(layer, scope, channels, channels))
            continue
        out = layer.filters
        if layer.scaled:
            out = make_divisible(out * multiplier, 8, 8)
        inner = squeeze = 0
        if layer.kind == "block":
            inner = make_divisible(channels * layer.expansion, 8)
            if layer.se:
                squeeze = make_divisible(inner / 4, 8)
        resolved.append(Resolved(layer, scope, channels, out, inner, squeeze))
        channels = out
    return tuple(resolved)


# Variable kinds: which ones train, which get L2 weight decay (slim: conv weights only,
# never depthwise weights, biases or batch norm), which are batch-norm moving statistics.
WEIGHTS, DEPTHWISE, BIASES, GAMMA, BETA, MEAN, VARIANCE = (
    "weights", "depthwise_weights", "biases", "gamma", "beta", "moving_mean", "moving_variance")
TRAINABLE_KINDS = frozenset([WEIGHTS, DEPTHWISE, BIASES, GAMMA, BETA])
REGULARIZED_KINDS = frozenset([WEIGHTS])
MOVING_KINDS = frozenset([MEAN, VARIANCE])


@dataclass(frozen=True)
class VarSpec:
    name: str
    shape: tuple
    kind: str

    @property
    def trainable(self):
        return self.kind in TRAINABLE_KINDS

    @property
    def regularized(self):
        return self.kind in REGULARIZED_KINDS

    @property
    def is_classifier(self):
        return self.name.startswith(LOGITS_SCOPE + "/")


def _conv_vars(scope, kernel, cin, cout, batch_norm, depthwise=False):
    if depthwise:
        out = [VarSpec(scope + "/depthwise_weights", (kernel, kernel, cin, 1), DEPTHWISE)]
    else:
        out = [VarSpec(scope + "/weights", (kernel, kernel, cin, cout), WEIGHTS)]
    if batch_norm:
        out += [VarSpec("%s/BatchNorm/%s" % (scope, k), (cout,), k) for k in (GAMMA, BETA, MEAN, VARIANCE)]
    else:
        out.append(VarSpec(scope + "/biases", (cout,), BIASES))
    return out


def variable_specs(resolved, num_classes=DEFAULT_NUM_CLASSES):
    """Every variable of the network, in slim's names, as an ordered name -> VarSpec map."""
    specs = []
    for r in resolved:
        layer = r.layer
        if layer.kind == "conv":
            specs += _conv_vars(r.scope, layer.kernel, r.in_ch, r.out_ch, layer.batch_norm)
        elif layer.kind == "block":
            if r.inner > r.in_ch:
                specs += _conv_vars(r.scope + "/expand", 1, r.in_ch, r.inner, True)
            specs += _conv_vars(r.scope + "/depthwise", layer.kernel, r.inner, r.inner, True, depthwise=True)
            if layer.se:
                se = r.scope + "/squeeze_excite"
                specs += _conv_vars(se + "/Conv", 1, r.inner, r.squeeze, False)
                specs += _conv_vars(se + "/Conv_1", 1, r.squeeze, r.inner, False)
            specs += _conv_vars(r.scope + "/project", 1, r.inner, r.out_ch, True)
    if num_classes:
        specs += _conv_vars(LOGITS_SCOPE, 1, resolved[-1].out_ch, num_classes, False)
    return collections.OrderedDict((s.name, s) for s in specs)


def initial_value(spec, rng):
    """slim's mobilenet initialisers: truncated normal (stddev 0.09) weights, zero biases and
    betas, unit gammas and moving variances."""
    if spec.kind in (WEIGHTS, DEPTHWISE):
        v = rng.standard_normal(spec.shape)
        while True:  # truncated at two standard deviations, as tf.truncated_normal
            bad = np.abs(v) > 2
            if not bad.any():
                break
            v[bad] = rng.standard_normal(int(bad.sum()))
        return (v * 0.09).astype(np.float32)
    if spec.kind in (GAMMA, VARIANCE):
        return np.ones(spec.shape, np.float32)
    return np.zeros(spec.shape, np.float32)


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


def count_parameters(variant="large", multiplier=1.0, num_classes=DEFAULT_NUM_CLASSES):
    """(trainable, moving statistics) element counts, computed from the spec alone."""
    specs = variable_specs(resolve(variant, multiplier), num_classes).values()
    size = lambda s: int(np.prod(s.shape))  # noqa: E731
    return (sum(size(s) for s in specs if s.trainable),
            sum(size(s) for s in specs if s.kind in MOVING_KINDS))
