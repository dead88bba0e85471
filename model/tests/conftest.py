import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from mbv3 import checkpoint  # noqa: E402
from mbv3.testing import random_values  # noqa: E402,F401  (tests import it from here)


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
