import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mbv3 import checkpoint, net  # noqa: E402


def random_values(variant="large", multiplier=1.0, num_classes=1001, seed=0):
    """Weights that keep activations O(1) through the whole net (He-scaled convs) and non-trivial
    batch-norm statistics, so parity tests compare real signal rather than near-zero logits."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, spec in net.variable_specs(net.resolve(variant, multiplier), num_classes).items():
        if spec.kind in (net.WEIGHTS, net.DEPTHWISE):
            fan_in = int(np.prod(spec.shape[:-1])) if spec.kind == net.WEIGHTS else spec.shape[0] * spec.shape[1]
            v = rng.standard_normal(spec.shape) * np.sqrt(2.0 / fan_in)
        elif spec.kind == net.GAMMA:
            v = rng.uniform(0.5, 1.5, spec.shape)
        elif spec.kind == net.VARIANCE:
            v = rng.uniform(0.5, 2.0, spec.shape)
        else:  # beta, moving mean, biases
            v = rng.normal(0, 0.2, spec.shape)
        values[name] = v.astype(np.float32)
    return values


@pytest.fixture
def write_checkpoint(tmp_path):
    def write(name="run", step=100, extra=None, **kwargs):
        values = random_values(**kwargs)
        values.update(extra or {})
        return checkpoint.save(str(tmp_path / name), step, values), values
    return write


def run_cli(*args, **kwargs):
    """Run the real `mbv3` entry point in a subprocess; returns CompletedProcess with text output."""
    cmd = [sys.executable, "-c", "import sys; from mbv3.cli import main; sys.exit(main())"] + [str(a) for a in args]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=kwargs.pop("timeout", 300), **kwargs)


def assert_one_line_error(result, *fragments):
    """A user error: exit 1, no traceback, a final `mbv3: error:` line naming what went wrong."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mbv3: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
