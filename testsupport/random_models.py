"""Random weights that behave numerically like trained ones, for the tests of the model package,
the service and the containers (pytest.ini puts this folder on sys.path): He-scaled convolutions
(logits of a useful size) and non-trivial batch-norm statistics, so parity checks compare real
signal. A random-weights bundle for users is `mbv3 init` + `mbv3 export`."""
import os

import numpy as np

from mbv3 import checkpoint, specs


def random_values(variant="large", multiplier=1.0, num_classes=1001, seed=0):
    """name -> float32 array for every variable of the network."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, spec in specs.variable_specs(specs.resolve(variant, multiplier), num_classes).items():
        if spec.kind in (specs.WEIGHTS, specs.DEPTHWISE):
            fan_in = int(np.prod(spec.shape[:-1])) if spec.kind == specs.WEIGHTS else spec.shape[0] * spec.shape[1]
            v = rng.standard_normal(spec.shape) * np.sqrt(2.0 / fan_in)
        elif spec.kind == specs.GAMMA:
            v = rng.uniform(0.5, 1.5, spec.shape)
        elif spec.kind == specs.VARIANCE:
            v = rng.uniform(0.5, 2.0, spec.shape)
        else:  # beta, moving mean, biases
            v = rng.normal(0, 0.2, spec.shape)
        values[name] = v.astype(np.float32)
    return values


def random_bundle(path, variant="small", multiplier=0.5, num_classes=11, image_size=96, seed=0, name=None, notice=None):
    """A model bundle at `path` exported from random_values (its checkpoint goes to `path`-ckpt)."""
    from mbv3 import export
    prefix = checkpoint.save(str(path) + "-ckpt", 1, random_values(variant, multiplier, num_classes, seed))
    export.export(prefix, str(path), image_size=image_size, name=name, notice=notice, log=lambda *_: None)
    return str(path)


def random_run(model_dir, variant="small", multiplier=0.35, num_classes=11, image_size=64, step=1, ema=False,
               labels=None, recipe="smoke", seed=0, overrides=()):
    """A training run's folder as `mbv3 train` leaves it (checkpoint, config.yaml, labels.txt), with
    random weights (and EMA shadows when `ema`); returns the checkpoint prefix."""
    from mbv3 import bundle, config
    values = random_values(variant, multiplier, num_classes, seed)
    if ema:
        values.update({n + checkpoint.EMA_SUFFIX: v * 0.5 for n, v in values.items()})
    prefix = checkpoint.save(str(model_dir), step, values)
    config.load(recipe, ["model.variant=%s" % variant, "model.multiplier=%s" % multiplier,
                         "data.image_size=%d" % image_size] + list(overrides)).save(str(model_dir))
    bundle.write_labels(os.path.join(str(model_dir), bundle.LABELS),
                        labels or [bundle.BACKGROUND] + ["class_%d" % i for i in range(1, num_classes)])
    return prefix
