"""build(): an image folder written as sharded TFRecords, labels.txt and dataset.json, resumably.

build() runs four steps: plan_build (the folder walked into classes, splits and shards, and the
fingerprint of those inputs), resume (what an earlier build of the same inputs left, and the first
dataset.json), write_shards (the threaded writers) and finish (the totals, labels.txt and the
complete dataset.json). Shards are written by a pool of threads, each under a temporary name renamed into place when
complete, and dataset.json records every finished shard as it lands: a rerun of the same inputs
(same plan fingerprint) keeps those and writes the rest; other inputs are refused. The first
failure, or Ctrl-C, stops the other writers before the pool joins them.
"""
import concurrent.futures
import datetime
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import tensorflow as tf

from .. import __version__, bundle, fileio
from ..console import format_duration, say
from ..errors import file_reason, first_line
from . import metadata, plan, transcode
from .metadata import (FORMAT, FORMAT_VERSION, LABEL_OFFSET, LABELS, METADATA, SPLITS, TRAIN, DataError, DatasetInfo,
                       Shard, Skipped, Split)
from .schema import make_example, shard_name

PROGRESS_SECONDS = 3.0
_SHARD_TEMPORARY = re.compile(r"^(%s)-\d{5}-of-\d{5}\.tmp$" % "|".join(SPLITS))


class _Progress(object):
    """Images done / total, rate and ETA, shared by the writer threads."""

    def __init__(self, total, log):
        self.total, self.log = total, log
        self.done = self.skipped = 0
        self.start = time.time()
        self.lock = threading.Lock()

    def add(self, skipped=False):
        with self.lock:
            self.done += 1
            self.skipped += int(skipped)

    def report(self, final=False):
        elapsed = max(time.time() - self.start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        when = "in %s" % format_duration(elapsed) if final else "ETA %s" % (format_duration(eta) if rate > 0 else "?")
        self.log("build: %d/%d images (%d skipped), %.0f images/s, %s"
                 % (self.done, self.total, self.skipped, rate, when))


def _write_shard(final, items, classes, texts, progress, stop, log):
    """Write one shard under a temporary name and rename it into place when complete."""
    tmp = final + ".tmp"
    written, skipped, converted = 0, [], 0
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for item in items:
                if stop.is_set():
                    raise _Stopped()
                try:
                    encoded, fmt, height, width, was_converted = transcode.prepare(item.path)
                except transcode.Unusable as e:
                    skipped.append({"path": item.rel, "reason": str(e)})
                    log("skipped %s: %s" % (item.path, e))
                    progress.add(skipped=True)
                    continue
                index = item.label - LABEL_OFFSET
                example = make_example(encoded, fmt, height, width, item.label, classes[index], texts[index], item.rel)
                writer.write(example.SerializeToString())
                written += 1
                converted += int(was_converted)
                progress.add()
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {"records": written, "skipped": skipped, "converted": converted}


class _Stopped(Exception):
    pass


def _previous_build(output_dir, fingerprint, inputs):
    """The written shards ({file: Shard}) of an earlier build of the same inputs into output_dir, its
    skipped entries and creation time; refuses a directory that holds anything else."""
    meta_path = os.path.join(output_dir, METADATA)
    if not os.path.exists(meta_path):
        foreign = [n for n in plan.visible(plan.list_dir(output_dir)) if not _is_temporary(n)]
        if foreign:
            raise DataError("output directory %s is not empty and holds no %s (e.g. %s); choose a new or empty "
                            "directory" % (output_dir, METADATA, foreign[0]))
        return {}, [], None
    previous = metadata.read(meta_path)
    if previous.fingerprint != fingerprint:
        old = previous.inputs
        before = ", ".join("%s=%s" % (k, old.get(k)) for k in sorted(inputs) if k != "fingerprint")
        now = ", ".join("%s=%s" % (k, inputs.get(k)) for k in sorted(inputs) if k != "fingerprint")
        raise DataError("%s holds a data set built from other inputs (then: %s; now: %s%s); use a new output "
                        "directory or delete this one" % (output_dir, before, now,
                                                          "; files changed" if before == now else ""))
    done = {}
    for split in previous.splits.values():
        for shard in split.shards:
            if shard.written and os.path.exists(os.path.join(output_dir, shard.file)):
                done[shard.file] = shard
    skipped = [s for s in previous.skipped if s.shard in done]
    return done, skipped, previous.created


def _is_temporary(name):
    """What a killed build leaves: a shard's `<split>-00000-of-00004.tmp`, dataset.json's fileio temporary."""
    return bool(_SHARD_TEMPORARY.match(name)) or fileio.is_temporary(name, (METADATA,))


@dataclass
class BuildPlan:
    """What a build will write: the classes, every split's items cut into shards, and the inputs
    (with their fingerprint) that decide whether an earlier build can be resumed."""
    images_dir: str
    output_dir: str
    labels_file: Optional[str]
    val_labels_file: Optional[str]
    classes: List[str]
    texts: List[str]
    items: Dict[str, list]          # split -> plan.Item
    assignments: Dict[str, list]    # split -> shards -> plan.Item
    passed: Any                     # plan.PassedOver: the paths not used
    inputs: Dict[str, Any]


@dataclass
class _Job:
    split: str
    index: int
    name: str
    items: list


def plan_build(images_dir, output_dir, shards=None, labels_file=None, val_split=0.0, val_labels_file=None, seed=0):
    """The BuildPlan of an image folder (see build() for the arguments); reads no image."""
    images_dir = os.path.abspath(os.path.expanduser(str(images_dir)))
    output_dir = os.path.abspath(os.path.expanduser(str(output_dir)))
    if not os.path.isdir(images_dir):
        raise DataError("no image folder at %s" % images_dir)
    if val_split is None:
        val_split = 0.0
    if not 0.0 <= float(val_split) < 1.0:
        raise DataError("val_split must be at least 0 and below 1, got %s" % val_split)
    val_split = float(val_split)
    classes, texts, items, passed = plan.plan_folder(images_dir, labels_file, val_split, val_labels_file, seed)
    assignments = dict((split, plan.assign(split_items, plan.num_shards(split, len(split_items), shards), seed))
                       for split, split_items in items.items())
    inputs = {"seed": seed, "val_split": val_split, "classes": len(classes)}
    for split in sorted(items):
        inputs[split + "_files"] = len(items[split])
        inputs[split + "_shards"] = len(assignments[split])
    inputs["fingerprint"] = plan.fingerprint(classes, assignments, seed, val_split)
    return BuildPlan(images_dir=images_dir, output_dir=output_dir,
                     labels_file=labels_file and os.path.abspath(labels_file),
                     val_labels_file=val_labels_file and os.path.abspath(val_labels_file),
                     classes=classes, texts=texts, items=items, assignments=assignments, passed=passed, inputs=inputs)


def resume(build_plan, log=say):
    """Prepare the output directory: keep the shards an earlier build of the same inputs wrote,
    remove what a killed build left, and write the first (incomplete) dataset.json. Returns
    (DatasetInfo, the shards still to write as _Jobs, the number of shards kept)."""
    p = build_plan
    try:
        os.makedirs(p.output_dir, exist_ok=True)
    except OSError as e:
        raise DataError("cannot create output directory %s: %s" % (p.output_dir, e.strerror or e))
    done, kept_skipped, created = _previous_build(p.output_dir, p.inputs["fingerprint"], p.inputs)
    removed = fileio.remove_temporaries(p.output_dir, _is_temporary)
    if removed:
        log("build: removed %d temporary files an interrupted build left: %s" % (len(removed), ", ".join(removed)))
    info = DatasetInfo(
        format=FORMAT, format_version=FORMAT_VERSION, complete=False,
        created=created or datetime.datetime.now().replace(microsecond=0).isoformat(),
        mbv3_version=__version__, source=p.images_dir, labels_file=p.labels_file, val_labels_file=p.val_labels_file,
        num_classes=len(p.classes) + LABEL_OFFSET, label_offset=LABEL_OFFSET, classes=p.classes, texts=p.texts,
        inputs=p.inputs, splits={}, skipped=[Skipped(**e) for e in p.passed.entries] + kept_skipped)
    jobs = []
    for split in sorted(p.assignments):
        count = len(p.assignments[split])
        entries = []
        for index, shard_items in enumerate(p.assignments[split]):
            name = shard_name(split, index, count)
            entries.append(done.get(name) or Shard(file=name, images=len(shard_items)))
            if name not in done:
                jobs.append(_Job(split, index, name, shard_items))
        info.splits[split] = Split(shards=entries, files=len(p.items[split]), ignored=p.passed.count(split))
    metadata.write(os.path.join(p.output_dir, METADATA), info)
    for entry in p.passed.entries:
        log("skipped %s: %s" % (os.path.join(p.images_dir, entry["path"]), entry["reason"]))
    if TRAIN in p.items:
        taught = set(i.label for i in p.items[TRAIN])
        without = [c for i, c in enumerate(p.classes) if i + LABEL_OFFSET not in taught]
        if without:
            log("train: %d classes of the labels file have no folder in %s, so no images: %s%s"
                % (len(without), os.path.join(p.images_dir, TRAIN), ", ".join(without[:10]),
                   ", ..." if len(without) > 10 else ""))
    if done:
        log("build: %d shards already written by an earlier run of the same inputs, kept" % len(done))
    return info, jobs, len(done)


def write_shards(build_plan, info, jobs, workers=None, log=say):
    """Write `jobs` with a pool of threads, recording each finished shard in `info` and dataset.json
    as it lands (a rerun keeps those); the first failure, or Ctrl-C, stops the other writers."""
    p = build_plan
    meta_path = os.path.join(p.output_dir, METADATA)
    progress = _Progress(sum(len(j.items) for j in jobs), log)
    stop = threading.Event()
    workers = max(1, int(workers or os.cpu_count() or 1))
    if jobs:
        log("build: %d images into %d shards in %s, %d worker threads"
            % (progress.total, len(jobs), p.output_dir, workers))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = dict((pool.submit(_write_shard, os.path.join(p.output_dir, job.name), job.items, p.classes,
                                    p.texts, progress, stop, log), job)
                       for job in jobs)
        pending = set(futures)
        last = time.time()
        try:
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=PROGRESS_SECONDS,
                                                            return_when=concurrent.futures.FIRST_COMPLETED)
                failed = [f for f in finished if f.exception() is not None]
                for future in finished:
                    if future in failed:
                        continue
                    job = futures[future]
                    result = future.result()
                    info.skipped.extend(Skipped(path=e["path"], reason=e["reason"], split=job.split, shard=job.name)
                                        for e in result["skipped"])
                    info.splits[job.split].shards[job.index] = Shard(
                        file=job.name, images=len(job.items), records=result["records"],
                        skipped=len(result["skipped"]), converted=result["converted"])
                    metadata.write(meta_path, info)  # a rerun keeps what is recorded here
                for future in failed:  # after recording the shards that did finish
                    try:
                        future.result()
                    except (IOError, OSError, tf.errors.OpError) as e:
                        raise DataError("cannot write shard %s: %s" % (os.path.join(p.output_dir, futures[future].name),
                                                                      first_line(e)))
                if time.time() - last >= PROGRESS_SECONDS and pending:
                    progress.report()
                    last = time.time()
        except BaseException:  # the first failure (or Ctrl-C) stops the other writers before the pool joins them
            stop.set()
            raise
    if jobs:
        progress.report(final=True)


def finish(build_plan, info, log=say):
    """Every split's totals, labels.txt, and dataset.json marked complete: the data set is usable."""
    output_dir = build_plan.output_dir
    for record in info.splits.values():
        record.written = sum(s.records for s in record.shards)
        record.skipped = sum(s.skipped for s in record.shards)
        record.converted = sum(s.converted for s in record.shards)
        record.num_examples = record.written
    info.skipped = sorted(info.skipped, key=lambda s: (s.split or "", s.path))
    info.complete = True
    try:
        bundle.write_labels(os.path.join(output_dir, LABELS), [bundle.BACKGROUND] + info.texts)
    except OSError as e:
        raise DataError("cannot write %s: %s" % (os.path.join(output_dir, LABELS), file_reason(e)))
    metadata.write(os.path.join(output_dir, METADATA), info)
    for split in sorted(info.splits):
        record = info.splits[split]
        log("%s: %d images written, %d unreadable skipped, %d other paths skipped, %d converted to JPEG, %d shards"
            % (split, record.written, record.skipped, record.ignored, record.converted, len(record.shards)))


def build(images_dir, output_dir, shards=None, labels_file=None, val_split=0.0, val_labels_file=None,
          workers=None, seed=0, log=say):
    """Write slim-format TFRecord shards, labels.txt and dataset.json for an ImageNet-layout folder.

    images_dir: train/<class>/<image> and optionally val/<class>/<image> (or validation/), or a
    flat val/ with val_labels_file (slim's one class per line in sorted filename order, or
    `filename class` lines). Without a validation folder, val_split > 0 holds out that fraction
    of every class of train (chosen by seed). labels_file: the classes in label order, one per
    line (`name` or `name<TAB>readable name`); default: the sorted train folders.
    shards: shards per split (an int for both, or {"train": n, "validation": m}); default about
    1,000 images each, at most 1024 train / 128 validation. Shards are written by `workers` threads
    (default: the CPU count). A rerun with the same inputs keeps the shards already written;
    different inputs are refused. Returns the dataset.json record plus `reused_shards` and `seconds`.
    """
    started = time.time()
    build_plan = plan_build(images_dir, output_dir, shards, labels_file, val_split, val_labels_file, seed)
    info, jobs, reused = resume(build_plan, log)
    write_shards(build_plan, info, jobs, workers, log)
    finish(build_plan, info, log)
    summary = info.to_dict()
    summary.update(output_dir=build_plan.output_dir, reused_shards=reused, seconds=round(time.time() - started, 3))
    return summary
