"""Log and progress lines go to stderr, flushed at once: stdout carries the results (JSON, bundle
paths, predictions) that scripts and `$(...)` capture."""
from __future__ import absolute_import, print_function

import sys


def say(msg):
    print(msg, file=sys.stderr)
    sys.stderr.flush()
