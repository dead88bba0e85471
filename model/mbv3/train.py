"""The training loop: one TF2 custom loop for every target.

`train()` sets the target up first (the NPU must open before other TensorFlow state exists), builds
the model and the optimizer state inside the target's strategy, resumes from the model dir's newest
readable checkpoint (or starts from `train.init_from`), and runs `steps_per_loop` steps per host call
in a tf.function. Checkpoints hold slim names plus `<var>/Momentum` slots, `<var>/ExponentialMovingAverage`
shadows and `global_step`, so a rerun continues the step, the LR schedule and the EMA where they were.
A save that fails (a full disk) stops the run with one line; the previous checkpoint stays the latest.
"""
import collections
import math
import os
import signal
import time

import numpy as np
import tensorflow as tf

from .console import format_duration, say
from . import checkpoint, config as config_mod, data, fileio, net, targets, training_math
from .errors import MbV3Error, file_reason

MOMENTUM_SUFFIX = "/Momentum"
LABELS = data.LABELS  # the data set's labels.txt, copied into the model dir
# What a run writes into its model dir besides checkpoints, each through fileio's temporaries.
RUN_FILES = (config_mod.SAVED_NAME, LABELS)


def is_stale_temporary(name):
    """A temporary that only a killed save of this run's files leaves in a model dir: ours by name."""
    return checkpoint.is_temporary(name) or fileio.is_temporary(name, RUN_FILES)


def _tensorboard_available():
    """tf.summary's scalar ops live in the tensorboard package, which TF 2.16+ no longer installs."""
    try:
        import tensorboard  # noqa: F401
        return True
    except ImportError:
        return False


class TrainState(object):
    """Model variables plus optimizer slots, EMA shadows, global step and loss scale, by checkpoint name."""

    def __init__(self, cfg, num_classes, compute_dtype, loss_scale, seed):
        m = cfg.model
        numerics = net.Numerics(bn_decay=m.bn_decay, bn_epsilon=m.bn_epsilon, dropout_keep=m.dropout_keep,
                                compute_dtype=compute_dtype)
        self.model = net.MobileNetV3(m.variant, m.multiplier, num_classes, numerics, seed=seed)
        first = dict(aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.trainable = [(n, v) for n, v in self.model.variables.items() if self.model.specs[n].trainable]
        self.slots = collections.OrderedDict(
            (n, tf.Variable(tf.zeros_like(v), trainable=False, name=n + MOMENTUM_SUFFIX, **first))
            for n, v in self.trainable)
        self.ema_decay = cfg.train.ema_decay
        self.ema = collections.OrderedDict()
        if self.ema_decay:
            for n, v in self.model.variables.items():
                self.ema[n] = tf.Variable(v.read_value(), trainable=False, name=n + checkpoint.EMA_SUFFIX, **first)
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step", **first)
        self.loss_scale = loss_scale
        self.metrics = {k: tf.Variable(0.0, trainable=False, name="metrics/" + k,
                                       synchronization=tf.VariableSynchronization.ON_READ,
                                       aggregation=tf.VariableAggregation.SUM)
                        for k in ("loss", "correct", "count")}

    def tensors(self):
        """name -> variable for everything a checkpoint holds (global_step is added by checkpoint.save)."""
        out = collections.OrderedDict(self.model.variables)
        out.update((n + MOMENTUM_SUFFIX, v) for n, v in self.slots.items())
        out.update((n + checkpoint.EMA_SUFFIX, v) for n, v in self.ema.items())
        if self.loss_scale is not None and not self.loss_scale.fixed:
            out.update(self.loss_scale.variables())
        return out

    def all_variables(self):
        return list(self.tensors().values()) + [self.global_step]

    def values(self):
        """NumPy values of every checkpointed variable (a collective read under multi-worker strategies,
        so every worker calls it, the chief writes)."""
        return collections.OrderedDict((n, np.asarray(v.read_value())) for n, v in self.tensors().items())

    def restore(self, prefix, log):
        """Everything from one of our own checkpoints: a resume."""
        reader = checkpoint.Reader(prefix)
        checkpoint.load_into(self.model.variables, self.model.specs, prefix, use_ema=False, reader=reader)
        extras = dict((n, v) for n, v in self.tensors().items() if n not in self.model.variables)
        missing = [n for n in extras if n not in reader.shapes]
        for name, var in extras.items():
            if name in reader.shapes:
                var.assign(reader.get(name))
        self.global_step.assign(reader.step or 0)
        log("resumed from %s at step %d%s" % (prefix, reader.step or 0,
                                              "" if not missing else " (%d optimizer/EMA variables were not in it and "
                                              "start fresh)" % len(missing)))

    def initialize_from(self, path, keep_step, reinit_classifier, log):
        """Weights (and with keep_step the step, momentum and EMA) from another run or an official checkpoint."""
        reader = checkpoint.Reader(path)
        report = checkpoint.load_into(self.model.variables, self.model.specs, reader.prefix, use_ema=False,
                                      reinit_classifier=reinit_classifier, reader=reader)
        for name, shadow in self.ema.items():
            source = name + checkpoint.EMA_SUFFIX
            if keep_step and source in reader.shapes and name not in report.reinitialized:
                shadow.assign(reader.get(source))
            else:
                shadow.assign(self.model.variables[name].read_value())
        if keep_step:
            for name, slot in self.slots.items():
                if name + MOMENTUM_SUFFIX in reader.shapes and name not in report.reinitialized:
                    slot.assign(reader.get(name + MOMENTUM_SUFFIX))
            self.global_step.assign(reader.step or 0)
        log(report.summary() + ("; continuing its global step %s" % reader.step if keep_step else "; starting at step 0"))


class Trainer(object):
    def __init__(self, cfg, data_dir, model_dir, log=say, target=None):
        self.cfg, self.data_dir, self.model_dir = cfg, data_dir, model_dir
        self.target = target or targets.get(cfg.target.name, cfg.target.to_dict())
        self.strategy = self.target.setup()  # first: the NPU must open before any other TF state
        self.log = log
        if not self.target.is_chief:  # every worker reports; only the chief's lines are unprefixed
            self.log = lambda msg: log("[%s %d] %s" % (self.target.worker + (msg,)))
        self.info = data.info(data_dir)
        t = cfg.train
        self.num_classes = int(cfg.model.num_classes or self.info["num_classes"])
        if self.num_classes != self.info["num_classes"]:
            raise MbV3Error("model.num_classes is %d but the data set %s has %d classes (with background)"
                            % (self.num_classes, data_dir, self.info["num_classes"]))
        examples = cfg.data.train_examples or data.num_examples(data_dir, cfg.data.train_split)
        if not examples:
            raise MbV3Error("no training examples in %s (split %s)" % (data_dir, cfg.data.train_split))
        self.global_batch = int(t.batch_size)
        if self.global_batch % self.target.num_replicas:
            raise MbV3Error("train.batch_size %d is not divisible by the %d replicas"
                            % (self.global_batch, self.target.num_replicas))
        self.steps_per_epoch = max(1, examples // self.global_batch)
        self.total_steps, self.warmup_steps, self.steps_per_decay = training_math.schedule_steps(t, self.steps_per_epoch)
        with self.strategy.scope():
            loss_scale = None
            if self.target.uses_loss_scale:
                fixed = cfg.target.loss_scale
                loss_scale = training_math.DynamicLossScale(fixed=None if fixed in (None, "dynamic") else float(fixed))
            self.state = TrainState(cfg, self.num_classes, self.target.compute_dtype, loss_scale, t.seed)
        self.regularized = [v for n, v in self.state.model.variables.items() if self.state.model.specs[n].regularized]
        self._stop = False
        self.latest_checkpoint = None

    # --- the step ----------------------------------------------------------------------------
    def _learning_rate(self, step):
        t = self.cfg.train
        return training_math.learning_rate(step, t.learning_rate, self.total_steps, self.warmup_steps, t.lr_schedule,
                                           self.steps_per_decay, t.lr_decay_factor, t.min_learning_rate)

    def _replica_step(self, images, labels):
        t, state, target = self.cfg.train, self.state, self.target
        names = [n for n, _ in state.trainable]
        variables = [v for _, v in state.trainable]
        with tf.GradientTape() as tape:
            logits = state.model(images, training=True)
            per_example = training_math.cross_entropy(labels, logits, self.num_classes, t.label_smoothing)
            loss = tf.reduce_sum(per_example) / float(self.global_batch)
            loss += training_math.l2_penalty(self.regularized, t.weight_decay) / float(target.num_replicas)
            scaled = loss * state.loss_scale.scale if state.loss_scale is not None else loss
        grads = tape.gradient(scaled, variables)
        grads = target.all_reduce_sum(grads)
        step = state.global_step.read_value()
        lr = self._learning_rate(step)

        def apply():
            for name, var, grad in zip(names, variables, grads):
                training_math.momentum_update(var, state.slots[name], grad, lr, t.momentum)
            if state.ema:
                decay = training_math.ema_decay(step, state.ema_decay)
                for name, shadow in state.ema.items():
                    training_math.ema_update(shadow, state.model.variables[name].read_value(), decay)
            return tf.constant(True)

        if state.loss_scale is not None:
            grads = [g / state.loss_scale.scale for g in grads]
            finite = target.all_finite(grads)
            tf.cond(finite, apply, lambda: tf.constant(False))
            state.loss_scale.update(finite)
        else:
            apply()
        state.global_step.assign_add(1)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32))
        # `loss` is this replica's share of the global mean: summed over replicas it is the step's loss
        state.metrics["loss"].assign_add(loss * float(self.global_batch))
        state.metrics["correct"].assign_add(correct)
        state.metrics["count"].assign_add(tf.cast(tf.shape(labels)[0], tf.float32))

    def _build_loop(self):
        replica_step = self._replica_step
        if self.target.jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def loop(iterator, steps):
            for _ in tf.range(steps):
                images, labels = next(iterator)
                self.target.run(replica_step, (images, labels))
        return loop

    def _dataset_fn(self, context):
        d = self.cfg.data
        return data.dataset(self.data_dir, d.train_split, context.get_per_replica_batch_size(self.global_batch),
                            d.image_size, training=True, shuffle_buffer=d.shuffle_buffer,
                            deterministic=d.deterministic, seed=d.seed, input_context=context,
                            crop_area_min=d.crop_area_min, flip=d.flip)

    # --- checkpoints -------------------------------------------------------------------------
    def save(self):
        step = int(self.state.global_step.numpy())
        values = self.state.values()
        if self.target.is_chief:
            prefix = checkpoint.save(self.model_dir, step, values, keep=self.cfg.checkpoint.keep)
            self.log("saved %s" % prefix)
            self.latest_checkpoint = prefix
            return prefix
        return None

    def _start(self, existing):
        t = self.cfg.train
        if existing:
            self.state.restore(existing, self.log)
            self.latest_checkpoint = existing
        elif t.init_from:
            self.state.initialize_from(t.init_from, t.init_keep_step, t.reinit_classifier, self.log)
        self.target.after_variables_created(self.state.all_variables())

    def _write_run_files(self):
        """The chief owns the model dir: it clears what killed saves left, then writes the run's files."""
        if not self.target.is_chief:
            return
        try:
            os.makedirs(self.model_dir, exist_ok=True)
        except OSError as e:
            raise MbV3Error("cannot create model dir %s: %s" % (self.model_dir, file_reason(e)))
        removed = fileio.remove_temporaries(self.model_dir, is_stale_temporary)
        if removed:
            self.log("removed %d temporary files an interrupted save left in %s: %s"
                     % (len(removed), self.model_dir, ", ".join(removed)))
        self.cfg.save(self.model_dir)
        labels = os.path.join(self.data_dir, LABELS)
        if os.path.exists(labels):
            fileio.copy(labels, os.path.join(self.model_dir, LABELS))

    # --- the run -----------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self.log("received signal %d: saving a checkpoint after the current steps, then stopping" % signum)
        self._stop = signum

    def run(self):
        cfg = self.cfg
        # the checkpoint to resume is chosen before anything is written: a run that cannot resume changes nothing
        existing = checkpoint.latest(self.model_dir, self.log)
        self._write_run_files()
        self._start(existing)
        self.log("target %s" % self.target.describe())
        self.log("training MobileNetV3 %s %s, %d classes: %d steps (%d per epoch, global batch %d), %s LR %.4g, "
                 "warm-up %d steps" % (cfg.model.variant, cfg.model.multiplier, self.num_classes, self.total_steps,
                                       self.steps_per_epoch, self.global_batch, cfg.train.lr_schedule,
                                       cfg.train.learning_rate, self.warmup_steps))
        step = int(self.state.global_step.numpy())
        if step >= self.total_steps:
            self.log("already at step %d of %d: nothing to do" % (step, self.total_steps))
            return self.summary(step)
        iterator = iter(self.target.distribute_dataset(self._dataset_fn))
        loop = self._build_loop()
        writer = None
        if cfg.log.summaries and self.target.is_chief:
            if _tensorboard_available():
                writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "train"))
            else:
                self.log("TensorBoard is not installed: no summaries this run (pip install tensorboard)")
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        every_log, every_ckpt = max(1, cfg.log.every_steps), max(1, cfg.checkpoint.every_steps)
        last_saved = step
        window_start, window_step, run_start, run_first = time.time(), step, time.time(), step
        try:
            while step < self.total_steps and not self._stop:
                n = min(self.target.steps_per_loop, self.total_steps - step,
                        every_log - step % every_log, every_ckpt - step % every_ckpt)
                self.target.before_loop(n)
                loop(iterator, tf.constant(n))
                step = int(self.state.global_step.numpy())
                if step % every_log == 0 or step >= self.total_steps:
                    now = time.time()
                    self._report(step, now - window_start, step - window_step, now - run_start, step - run_first, writer)
                    window_start, window_step = now, step
                if step % every_ckpt == 0 or step >= self.total_steps:
                    self.save()
                    last_saved = step
            if step != last_saved:
                self.save()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if writer is not None:
                writer.close()
        return self.summary(step)

    def _report(self, step, seconds, steps, total_seconds, total_steps, writer):
        m = self.state.metrics  # ON_READ/SUM: reading sums the replicas (the NPU: this card only)
        count = float(m["count"].read_value())
        loss = float(m["loss"].read_value()) / max(count, 1.0)
        top1 = float(m["correct"].read_value()) / max(count, 1.0)
        for v in m.values():
            v.assign(0.0)
        lr = float(self._learning_rate(step))
        images_per_s = steps * self.global_batch / max(seconds, 1e-9)
        rate = total_steps / max(total_seconds, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        scale = ""
        if self.state.loss_scale is not None:
            scale = "  loss scale %g" % float(self.state.loss_scale.scale.numpy())
        self.log("step %d/%d (%.1f%%)  loss %.4f  top1 %.3f  lr %.5f  %.1f img/s  ETA %s%s" % (
            step, self.total_steps, 100.0 * step / self.total_steps, loss, top1, lr, images_per_s,
            format_duration(eta) if math.isfinite(eta) else "?", scale))
        if writer is not None:
            with writer.as_default():
                for key, value in (("loss", loss), ("top1", top1), ("learning_rate", lr), ("images_per_sec", images_per_s)):
                    tf.summary.scalar(key, value, step=step)
            writer.flush()

    def summary(self, step):
        return {"model_dir": self.model_dir, "step": step, "total_steps": self.total_steps,
                "checkpoint": self.latest_checkpoint if self.target.is_chief else None,
                "stopped_by_signal": self._stop or None}


def train(recipe_name, data_dir, model_dir, overrides=(), log=say, target=None):
    """Run (or resume) training; returns a summary dict."""
    cfg = config_mod.load(recipe_name, overrides)
    return Trainer(cfg, data_dir, model_dir, log=log, target=target).run()
