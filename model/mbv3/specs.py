"""MobileNetV3's architecture as data, with no TensorFlow: the spec tables, the depth-multiplier
rule, slim's variable names and shapes, and slim's initialisers.

Each variant is a tuple of `Layer` rows (mirroring slim's `mobilenet_v3.V3_LARGE` op list); a new
variant is a new table, or a transform of one (as `minimalistic`), registered in VARIANTS.
`resolve()` turns a spec plus a depth multiplier into concrete layers with slim scope names and
channel counts; `mbv3.net.forward()` runs any resolved spec.
"""
import collections
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

FAMILY = "MobileNetV3"
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


@dataclass
class Architecture:
    """Which network: a variant of VARIANTS at a depth multiplier, the one record for it.

    A checkpoint's detected architecture (mbv3.checkpoint) sets num_classes, 0 when it has no
    classifier. model.json's `architecture` object (mbv3.bundle) is this record as written: family and
    trainable_parameters, and no num_classes, which a bundle records as output.num_classes; None fields
    are not written, so the object keeps its bytes."""
    variant: str
    multiplier: float
    family: str = FAMILY
    trainable_parameters: Optional[int] = None
    num_classes: Optional[int] = None

    def describe(self):
        classes = "" if self.num_classes is None else ", %d classes" % self.num_classes
        return "%s %s%s" % (self.variant, self.multiplier, classes)


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


def count_parameters(variant="large", multiplier=1.0, num_classes=DEFAULT_NUM_CLASSES):
    """(trainable, moving statistics) element counts, computed from the spec alone."""
    specs = variable_specs(resolve(variant, multiplier), num_classes).values()
    size = lambda s: int(np.prod(s.shape))  # noqa: E731
    return (sum(size(s) for s in specs if s.trainable),
            sum(size(s) for s in specs if s.kind in MOVING_KINDS))
