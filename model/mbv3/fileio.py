"""Files a crash must never leave half-written (checkpoint state, configs, dataset and bundle
metadata): written to a temporary sibling, flushed to disk, then renamed over the target."""
from __future__ import absolute_import, division, print_function

import io
import os


def write_text(path, text):
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with io.open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
