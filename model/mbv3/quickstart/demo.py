"""The digits demo `make serve` falls back to when the official checkpoint cannot be had: what `make
demo` trains (scikit-learn's digits, the digits-demo recipe: well under a minute on two cores), made
once in the cache under a key of everything that decides it (a changed recipe trains again), each
step resumable, and the notice that says it is not an ImageNet classifier: boxed on the terminal,
and in the bundle's model.json, which the service's page shows."""

import hashlib
import json
import os
import textwrap

from ..console import import_tensorflow
from ..errors import MbV3Error
from . import cache, official

NAME = "mbv3-digits-demo"
RECIPE = "digits-demo"
IMAGE_SIZE = 32   # the image files written; the model's input size is the recipe's data.image_size
VAL_SPLIT = 0.2
NOTICE = ("THIS IS THE DEMO DIGITS MODEL, NOT AN IMAGENET CLASSIFIER.\n"
          "It is a MobileNetV3-Small trained here on scikit-learn's 8x8 handwritten digits: every "
          "image, photo or not, gets one of the labels 0-9.")


def train_digits(data_dir, model_dir, log):
    """The demo's recipe (RECIPE) on its TFRecords (resumes an interrupted run)."""
    import_tensorflow()   # quietly, before the TensorFlow module below
    from .. import train
    summary = train.train(RECIPE, data_dir, model_dir, log=log)
    if summary["stopped_by_signal"]:
        raise MbV3Error("demo training stopped by signal %d at step %d; rerun to resume"
                        % (summary["stopped_by_signal"], summary["step"]))


def key():
    """A short hash of everything that decides the demo bundle: the resolved recipe (base.yaml
    included), the images written, the split, the name and the notice."""
    from .. import config
    what = {"recipe": config.load(RECIPE).to_dict(), "image_size": IMAGE_SIZE, "val_split": VAL_SPLIT,
            "name": NAME, "notice": NOTICE}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def bundle(root, log):
    """The digits demo bundle: images -> TFRecords -> train -> export."""
    k = key()
    out = os.path.join(root, "bundles", "demo-digits-" + k)
    if cache.is_bundle(out):
        log("using the digits demo bundle trained earlier: %s" % out)
        return out
    import_tensorflow()   # quietly, before the TensorFlow module below
    from .. import data, digits
    work = os.path.join(root, "demo", k)
    images, records, run = (os.path.join(work, n) for n in ("images", "data", "run"))
    log("training the digits DEMO model once (about 30 s on 2 quiet cores) in %s" % work)
    digits.write_digits_folder(images, size=IMAGE_SIZE)
    data.build(images, records, val_split=VAL_SPLIT, log=log)
    train_digits(records, run, log)
    # the size and preprocessing are the run's (its config.yaml)
    cache.export_into(run, out, log, name=NAME, notice=NOTICE)
    return out


def banner(reason, root=None):
    """The boxed notice that the demo model is being served, with the way to the real one."""
    tgz = official.NAME + ".tgz"
    paragraphs = NOTICE.split("\n") + [
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
