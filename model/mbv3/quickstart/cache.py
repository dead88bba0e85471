"""The quick-start cache (MBV3_CACHE, default ~/.cache/mbv3): downloads, unpacked archives, the demo's
data and run, and the exported bundles, each reused on the next run. A bundle counts as done once
its model.json exists (export writes bundles atomically)."""

import contextlib
import os
import shutil

from .. import bundle
from ..console import import_tensorflow
from ..errors import MbV3Error


def root(cache_dir=None):
    return os.path.abspath(os.path.expanduser(cache_dir or os.environ.get("MBV3_CACHE") or "~/.cache/mbv3"))


def is_bundle(path):
    return os.path.isfile(os.path.join(path, bundle.METADATA))


@contextlib.contextmanager
def lock(cache, log):
    """One process at a time downloads, trains or exports into a cache; a second one (two `make serve`
    at once) waits and then reuses the first one's bundle."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    try:
        if not os.path.isdir(cache):
            os.makedirs(cache)
        f = open(os.path.join(cache, ".lock"), "a")
    except OSError as e:
        raise MbV3Error("cannot use the cache %s: %s (choose another with MBV3_CACHE or --cache)" % (cache, e.strerror or e))
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("waiting for another process preparing a model in %s" % cache)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def export_into(prefix, out, log, **kwargs):
    import_tensorflow()   # quietly, before the TensorFlow module below
    from .. import export
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    export.export(prefix, out, log=log, **kwargs)


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)
