"""The digits demo `make serve` falls back to when the official checkpoint cannot be had: what `make
demo` trains (scikit-learn's digits, the digits-cpu recipe), made once in the cache, each step
resumable, and the boxed notice that says it is not an ImageNet classifier."""

import os
import textwrap

from ..errors import MbV3Error
from . import cache, official

NAME = "mbv3-digits-demo"
RECIPE = "digits-cpu"
IMAGE_SIZE = 64   # the image files written; the model's input size is the recipe's data.image_size


def train_digits(data_dir, model_dir, log):
    """The digits-cpu recipe on the demo's TFRecords (resumes an interrupted run)."""
    from .. import train
    summary = train.train(RECIPE, data_dir, model_dir, log=log)
    if summary["stopped_by_signal"]:
        raise MbV3Error("demo training stopped by signal %d at step %d; rerun to resume"
                        % (summary["stopped_by_signal"], summary["step"]))


def bundle(root, log):
    """The digits demo bundle: images -> TFRecords -> train -> export."""
    out = os.path.join(root, "bundles", "demo-digits")
    if cache.is_bundle(out):
        log("using the digits demo bundle trained earlier: %s" % out)
        return out
    from .. import data, digits
    work = os.path.join(root, "demo")
    images, records, run = (os.path.join(work, n) for n in ("images", "data", "run"))
    log("training the digits DEMO model once (1-2 minutes on 2 cores) in %s" % work)
    digits.write_digits_folder(images, size=IMAGE_SIZE)
    data.build(images, records, val_split=0.2, log=log)
    train_digits(records, run, log)
    cache.export_into(run, out, log, name=NAME)   # the size and preprocessing are the run's (its config.yaml)
    return out


def banner(reason, root=None):
    """The boxed notice that the demo model is being served, with the way to the real one."""
    tgz = official.NAME + ".tgz"
    paragraphs = [
        "THIS IS THE DEMO DIGITS MODEL, NOT AN IMAGENET CLASSIFIER.",
        "It is a MobileNetV3-Small trained here on scikit-learn's 8x8 handwritten digits: every "
        "image, photo or not, gets one of the labels 0-9.",
        "Why: %s" % reason,
        "To serve the real ImageNet model (TF-slim %s, 1001 classes), on a machine with internet:" % official.NAME,
    ]
    commands = [
        "  curl -LO %s" % official.URL,
        "then copy %s here and run:" % tgz,
        "  tar xzf %s" % tgz,
        "  make serve MODEL=%s/ema" % official.NAME,
    ]
    if root:
        commands.append("(or put %s in %s and run make serve again)" % (tgz, os.path.join(root, "downloads")))
    commands.append("(or point MBV3_OFFICIAL_URL at a mirror of it that this machine reaches)")
    width = max([76] + [len(line) for line in commands])
    lines = []
    for p in paragraphs:
        lines.extend(textwrap.wrap(p, width) + [""])
    lines.extend(commands)
    rule = "+" + "-" * (width + 4) + "+"
    return "\n".join(["", rule] + ["|  %s  |" % line.ljust(width) for line in lines] + [rule, ""])
