"""Top-1 / top-5 of a checkpoint over a whole split, the last partial batch included (the seed's
script dropped it). Results are printed and written as JSON next to the checkpoint."""
from __future__ import absolute_import, division, print_function

import json
import os
import time

import tensorflow as tf

from .console import say
from . import checkpoint, config as config_mod, data, net
from .errors import MbV3Error


def _image_size(prefix, image_size):
    """The size the run trained at (its saved config.yaml), unless given; 224 otherwise."""
    if image_size:
        return int(image_size)
    saved = config_mod.load_saved(os.path.dirname(prefix))
    return int(saved.data.image_size) if saved is not None else 224


def evaluate(checkpoint_path, data_dir, use_ema=None, split="validation", batch_size=100, image_size=None,
             write=True, log=say):
    reader = checkpoint.Reader(checkpoint_path)
    arch = checkpoint.detect_architecture(reader.shapes)
    info = data.info(data_dir)
    if arch.num_classes != info["num_classes"]:
        raise MbV3Error("checkpoint has %d classes, data set %s has %d" % (arch.num_classes, data_dir, info["num_classes"]))
    expected = data.num_examples(data_dir, split)
    if not expected:
        raise MbV3Error("no %s examples in %s" % (split, data_dir))
    size = _image_size(reader.prefix, image_size)
    model = net.MobileNetV3(arch.variant, arch.multiplier, arch.num_classes)
    report = checkpoint.load_into(model.variables, model.specs, reader.prefix, use_ema=use_ema, reader=reader)
    log(report.summary())

    @tf.function
    def top5(images):
        return tf.math.top_k(model(images, training=False), k=min(5, arch.num_classes)).indices

    stats = {}
    ds = data.dataset(data_dir, split, batch_size, size, training=False, stats=stats)
    seen = top1 = in_top5 = 0
    start = time.time()
    for images, labels in ds:
        best = top5(images).numpy()
        labels = labels.numpy()
        top1 += int((best[:, 0] == labels).sum())
        in_top5 += int((best == labels[:, None]).any(axis=1).sum())
        seen += len(labels)
    seconds = time.time() - start
    skipped = int(stats.get("skipped", 0)) if stats else 0
    result = {
        "checkpoint": reader.prefix, "step": reader.step, "weights": "ema" if report.used_ema else "raw",
        "data": os.path.abspath(data_dir), "split": split, "image_size": size, "examples": seen,
        "expected_examples": expected, "skipped_records": skipped,
        "top1": top1 / float(max(seen, 1)), "top5": in_top5 / float(max(seen, 1)),
        "seconds": round(seconds, 2), "images_per_sec": round(seen / max(seconds, 1e-9), 1),
    }
    if seen + skipped != expected:
        log("warning: read %d examples (+%d skipped) but dataset.json lists %d" % (seen, skipped, expected))
    log("%s (step %s, %s weights): top-1 %.4f  top-5 %.4f  over %d %s images" % (
        reader.prefix, reader.step, result["weights"], result["top1"], result["top5"], seen, split))
    if write:
        path = "%s.eval-%s-%s.json" % (reader.prefix, split, result["weights"])
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        result["written_to"] = path
    return result

