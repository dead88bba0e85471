import errno
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from mbv3 import checkpoint  # noqa: E402
from random_models import random_values  # noqa: E402,F401  (tests import it from here)


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


class TinyFs(object):
    """A real file system of a few MB (tmpfs) that a test fills up to see what a full disk does."""

    def __init__(self, path):
        self.path = path
        self.filler = os.path.join(path, "filler")

    def free_bytes(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave=0):
        """Write a filler file until the file system is full, then give `leave` bytes back."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
                try:
                    while True:
                        os.write(fd, chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
            if leave:
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        finally:
            os.close(fd)
        return self.free_bytes()

    def empty_filler(self):
        os.remove(self.filler)

    def listing(self):
        """Every path under the file system but the filler, relative, with its size."""
        out = {}
        for root, dirs, files in os.walk(self.path):
            for name in files:
                path = os.path.join(root, name)
                if path != self.filler:
                    out[os.path.relpath(path, self.path)] = os.path.getsize(path)
        return out


@pytest.fixture
def tiny_fs(tmp_path):
    """A 16 MB tmpfs mounted for one test. Mounting needs root: CI runs as root; elsewhere it skips."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root (CI runs as root)")
    mount = tmp_path / "tiny-fs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mount)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % result.stdout.strip())
    try:
        yield TinyFs(str(mount))
    finally:
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)])
