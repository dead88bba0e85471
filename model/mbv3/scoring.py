"""Top-1 / top-5 counting and the result record, shared by the checkpoint eval (TensorFlow,
mbv3.evaluate) and the bundle eval (ONNX Runtime, mbv3.bundle_eval): both count alike, so their
results compare field by field. No TensorFlow here."""
import json

import numpy as np

from . import fileio
from .errors import WriteError

TOP_K = 5


class Tally(object):
    """Images scored so far, and how many had the label first / among the best five."""

    def __init__(self):
        self.seen = self.top1 = self.top5 = 0

    def add(self, best, labels):
        """best: [N, k] class indices, best first; labels: [N] class indices."""
        best, labels = np.asarray(best), np.asarray(labels)
        self.top1 += int((best[:, 0] == labels).sum())
        self.top5 += int((best[:, :TOP_K] == labels[:, None]).any(axis=1).sum())
        self.seen += int(len(labels))

    def fields(self, expected, skipped, seconds):
        return {"examples": self.seen, "expected_examples": expected, "skipped_records": skipped,
                "top1": self.top1 / float(max(self.seen, 1)), "top5": self.top5 / float(max(self.seen, 1)),
                "seconds": round(seconds, 2), "images_per_sec": round(self.seen / max(seconds, 1e-9), 1)}

    def check(self, expected, skipped, log):
        """Every record dataset.json lists was scored or counted as skipped (a damaged shard loses the rest)."""
        if self.seen + skipped != expected:
            log("warning: read %d examples (+%d skipped) but dataset.json lists %d" % (self.seen, skipped, expected))


def write_json(result, path, log):
    """The result as JSON at path (atomically); the path, or None with a warning when it cannot be
    written: the caller prints the result anyway, so an unwritable folder loses nothing."""
    try:
        fileio.write_text(path, json.dumps(result, indent=2) + "\n")
    except WriteError as e:
        log("warning: %s; the result is printed only" % e)
        return None
    return path
