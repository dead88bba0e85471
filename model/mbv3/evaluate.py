"""Top-1 / top-5 of a checkpoint over a whole split, the last partial batch included, so every image
of the split counts once. Results are printed and written as JSON next to the checkpoint.
mbv3.bundle_eval counts the same way (mbv3.scoring) for an exported bundle."""
import os
import time

import tensorflow as tf

from .console import say
from . import checkpoint, data, net, runinfo, scoring
from .errors import MbV3Error


def evaluate(checkpoint_path, data_dir, use_ema=None, split="validation", batch_size=100, image_size=None,
             write=True, log=say):
    reader = checkpoint.Reader(checkpoint_path)
    arch = checkpoint.detect_architecture(reader.shapes)
    info = data.load(data_dir)
    if arch.num_classes != info.num_classes:
        raise MbV3Error("checkpoint has %d classes, data set %s has %d" % (arch.num_classes, data_dir, info.num_classes))
    expected = data.num_examples(data_dir, split)
    if not expected:
        raise MbV3Error("no %s examples in %s" % (split, data_dir))
    size = runinfo.image_size(reader.prefix, image_size)
    model = net.MobileNetV3(arch.variant, arch.multiplier, arch.num_classes, runinfo.numerics(reader.prefix))
    report = checkpoint.load_into(model.variables, model.specs, reader.prefix, use_ema=use_ema, reader=reader)
    log(report.summary())

    @tf.function
    def top5(images):
        return tf.math.top_k(model(images, training=False), k=min(scoring.TOP_K, arch.num_classes)).indices

    stats = {}
    ds = data.dataset(data_dir, split, batch_size, size, training=False, stats=stats)
    tally = scoring.Tally()
    start = time.time()
    for images, labels in ds:
        tally.add(top5(images).numpy(), labels.numpy())
    seconds = time.time() - start
    skipped = int(stats.get("skipped", 0)) if stats else 0
    result = {
        "checkpoint": reader.prefix, "step": reader.step, "weights": "ema" if report.used_ema else "raw",
        "data": os.path.abspath(data_dir), "split": split, "image_size": size,
    }
    result.update(tally.fields(expected, skipped, seconds))
    tally.check(expected, skipped, log)
    log("%s (step %s, %s weights): top-1 %.4f  top-5 %.4f  over %d %s images" % (
        reader.prefix, reader.step, result["weights"], result["top1"], result["top5"], tally.seen, split))
    if write:
        written = scoring.write_json(result, "%s.eval-%s-%s.json" % (reader.prefix, split, result["weights"]), log)
        if written:
            result["written_to"] = written
    return result

