"""TF1-format, name-based checkpoints in TF-slim's variable names.

Reading accepts anything a TF1 `Saver` wrote (slim's own training scripts, the official
`v3-large_224_1.0_float` files, the published GPU and NPU runs) and what `save()` writes; `save()`
writes what those tools restore. A save is atomic: the files are written under a temporary
prefix, renamed into place, and only then does the `checkpoint` state file name them. A directory
stands for its newest readable checkpoint: one a crash, a damaged disk or a partial copy left
truncated or altered is passed over, with a line saying so.
"""
import glob
import os
import re
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from . import checkpoint_paths, fileio, specs
from .checkpoint_paths import STATE_FILE
from .console import say
from .errors import CheckpointError, WriteError, file_reason, first_line

EMA_SUFFIX = "/ExponentialMovingAverage"
GLOBAL_STEP = "global_step"
DEFAULT_BASENAME = "model.ckpt"
TMP_PREFIX = ".tmp-"
# save()'s temporaries: `.tmp-<basename>-<step>-<pid>` plus `.index` / `.data-*`, and the
# `.tempstate<n>` files TensorFlow writes those through.
_TEMPORARY = re.compile(r"^%s.+-\d+-\d+\.(index|data-\d+-of-\d+)(\.tempstate\d+)?$" % re.escape(TMP_PREFIX))
# Optimizer slots and bookkeeping that slim / TF1 training leaves in checkpoints: recognised, not
# model weights, never reported as unexpected.
SLOT_SUFFIXES = (EMA_SUFFIX, "/Momentum", "/RMSProp", "/RMSProp_1", "/Adam", "/Adam_1", "/LossScale")
# What TensorFlow's checkpoint reader raises for unreadable files (truncated data raises IndexError).
_READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, RuntimeError)
MULTIPLIERS = (0.35, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def resolve_prefix(path, log=say):
    """A checkpoint prefix from a prefix (exactly that checkpoint) or a directory (its newest
    readable checkpoint, see latest())."""
    directory, prefix = checkpoint_paths.locate(path)
    if directory is None:
        return prefix
    prefix = latest(directory, log)
    if prefix is None:
        raise CheckpointError("no checkpoint found in directory %s" % directory)
    return prefix


def _step_of(prefix):
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def existing(directory, log=None):
    """The checkpoint prefixes in `directory`, newest first: those the `checkpoint` state file
    names (its latest, then the others newest first), then any other `<prefix>.index` by step.
    Prefixes the state file names may no longer exist. An unreadable state file is reported
    through `log` and passed over: the files themselves still say what there is."""
    named = []
    if os.path.exists(os.path.join(directory, STATE_FILE)):
        state = _state(directory)
        if state is not None:  # relative paths come back joined to `directory`
            named = [state.model_checkpoint_path] + list(reversed(state.all_model_checkpoint_paths))
            named = [_moved(p, directory) for p in named]
        elif log:
            log("%s: unreadable checkpoint state file; taking the checkpoints by step"
                % os.path.join(directory, STATE_FILE))
    found = [p[:-len(".index")] for p in glob.glob(os.path.join(glob.escape(directory), "*.index"))]
    ordered = []
    for prefix in named + sorted(found, key=lambda p: (_step_of(p), p), reverse=True):
        prefix = os.path.normpath(prefix)
        if prefix not in ordered:
            ordered.append(prefix)
    return ordered


def _moved(prefix, directory):
    """TF1's Saver records absolute paths: after the run folder moved, the same name in `directory`."""
    here = os.path.join(directory, os.path.basename(prefix))
    return here if not os.path.exists(prefix + ".index") and os.path.exists(here + ".index") else prefix


def found_in(directory):
    """Names of the checkpoints in `directory` (newest first, then the state file if there is one):
    empty when it holds none, or does not exist."""
    if not os.path.isdir(directory):
        return []
    names = [os.path.basename(p) for p in existing(directory) if os.path.exists(p + ".index")]
    return names + ([STATE_FILE] if os.path.exists(os.path.join(directory, STATE_FILE)) else [])


def problem(prefix):
    """Why the checkpoint at `prefix` cannot be restored, or None when it can. Reads every tensor,
    so TensorFlow checks each one's CRC32C: a truncated or altered file fails here rather than
    halfway through a restore."""
    if not os.path.exists(prefix + ".index"):
        return "missing (no .index file)"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except _READ_ERRORS as e:
        return first_line(e)
    return None


def latest(directory, log=say):
    """The newest readable checkpoint prefix in `directory`, or None when it holds no checkpoint
    files at all (or does not exist).

    Newer checkpoints that cannot be read (a truncated or altered file, one the state file names
    but that is gone) are passed over with one line each through `log`. Checkpoint files of which
    none is readable are an error, not "none": a resume must never start over at step 0."""
    if not found_in(directory):
        return None
    first = None
    for prefix in existing(directory, log):
        why = problem(prefix)
        if why is None:
            return prefix
        log("passing over unreadable checkpoint %s: %s" % (prefix, why))
        first = first or "%s: %s" % (os.path.basename(prefix), why)
    raise CheckpointError("%s holds checkpoint files but no readable checkpoint (%s); repair or remove them, "
                          "or choose another directory" % (directory, first or "none besides the state file"))


class Reader(object):
    """A checkpoint's names, shapes and values; every TensorFlow failure becomes a CheckpointError."""

    def __init__(self, path):
        self.prefix = resolve_prefix(path)
        try:
            self._reader = tf.train.load_checkpoint(self.prefix)
            self.shapes = {k: tuple(v) for k, v in self._reader.get_variable_to_shape_map().items()}
        except _READ_ERRORS as e:
            raise CheckpointError("cannot read checkpoint %s: %s" % (self.prefix, first_line(e)))

    def get(self, name):
        try:
            return self._reader.get_tensor(name)
        except _READ_ERRORS as e:
            raise CheckpointError("checkpoint %s: cannot read %s: %s" % (self.prefix, name, first_line(e)))

    @property
    def step(self):
        if GLOBAL_STEP in self.shapes:
            return int(self.get(GLOBAL_STEP))
        tail = self.prefix.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else None

    @property
    def model_names(self):
        return sorted(n for n in self.shapes if _is_model_name(n))

    @property
    def has_ema(self):
        return any(n.endswith(EMA_SUFFIX) for n in self.shapes)


def _is_model_name(name):
    return name.startswith(specs.SCOPE + "/") and not name.endswith(SLOT_SUFFIXES)


def detect_architecture(shapes):
    """The specs.Architecture (variant, depth multiplier, num_classes; 0 classes without a classifier)
    whose variables match a checkpoint's exactly."""
    logits = shapes.get(specs.LOGITS_SCOPE + "/weights")
    num_classes = logits[-1] if logits else 0
    body = {n: s for n, s in shapes.items() if _is_model_name(n) and not n.startswith(specs.LOGITS_SCOPE + "/")}
    for variant in specs.VARIANTS:
        for multiplier in MULTIPLIERS:
            expected = specs.variable_specs(specs.resolve(variant, multiplier), num_classes=0)
            if len(expected) == len(body) and all(body.get(n) == s.shape for n, s in expected.items()):
                return specs.Architecture(variant, multiplier, num_classes=num_classes)
    raise CheckpointError("checkpoint variables match no MobileNetV3 variant (%s) at depth multipliers %s"
                          % (", ".join(specs.VARIANTS), ", ".join(str(m) for m in MULTIPLIERS)))


@dataclass
class LoadReport:
    prefix: str
    step: object
    used_ema: bool
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    reinitialized: list = field(default_factory=list)

    def summary(self):
        parts = ["loaded %s (step %s, %s weights)" % (self.prefix, self.step, "EMA" if self.used_ema else "raw")]
        if self.reinitialized:
            parts.append("re-initialised %d classifier variables" % len(self.reinitialized))
        if self.unexpected:
            parts.append("ignored %d unexpected variables (first: %s)" % (len(self.unexpected), self.unexpected[0]))
        return "; ".join(parts)


def read_values(path, specs, use_ema=None, reinit_classifier=False, reader=None):
    """Values for every variable in `specs` (name -> VarSpec) from a checkpoint.

    use_ema: True takes `<name>/ExponentialMovingAverage` shadows (error if a trainable variable has
    none), False the raw values, None shadows when the checkpoint has them. A missing variable or a
    shape mismatch is an error naming the variable, except for the classifier when
    `reinit_classifier` is set: then it is left out of the result for the caller to initialise.
    """
    reader = reader or Reader(path)
    if use_ema is None:
        use_ema = reader.has_ema
    values, missing, reinit = {}, [], []
    for name, spec in specs.items():
        if spec.is_classifier and reinit_classifier:
            if reader.shapes.get(name) != spec.shape:
                reinit.append(name)
                continue
        source = name
        if use_ema and name + EMA_SUFFIX in reader.shapes:
            source = name + EMA_SUFFIX
        elif use_ema and spec.trainable:
            raise CheckpointError("checkpoint %s has no EMA shadow for %s (use raw weights instead)"
                                  % (reader.prefix, name))
        if source not in reader.shapes:
            missing.append(name)
            continue
        if reader.shapes[source] != spec.shape:
            hint = " (pass the classifier re-initialisation option to fine-tune on other classes)" \
                if spec.is_classifier else ""
            raise CheckpointError("shape mismatch for %s: checkpoint has %s, model expects %s%s"
                                  % (name, list(reader.shapes[source]), list(spec.shape), hint))
        values[name] = reader.get(source)
    if missing:
        raise CheckpointError("checkpoint %s lacks %d model variables (first: %s); is it a MobileNetV3 "
                              "checkpoint of this variant?" % (reader.prefix, len(missing), missing[0]))
    unexpected = [n for n in reader.model_names if n not in specs]
    return values, LoadReport(reader.prefix, reader.step, bool(use_ema), missing, unexpected, reinit)


def load_into(variables, specs, path, **kwargs):
    """Assign checkpoint values to a name -> tf.Variable map; returns the LoadReport."""
    values, report = read_values(path, specs, **kwargs)
    for name, value in values.items():
        variables[name].assign(value)
    return report


def _checkpoint_files(prefix):
    return sorted(glob.glob(glob.escape(prefix) + ".data-*")) + [prefix + ".index"]


def is_temporary(name):
    """Whether a file name is one of save()'s temporaries: its checkpoint files' or its state file's."""
    return bool(_TEMPORARY.match(name)) or fileio.is_temporary(name, (STATE_FILE,))


def save(model_dir, step, tensors, keep=5, basename=DEFAULT_BASENAME):
    """Write `tensors` (name -> array, tensor or variable) plus global_step as
    `<model_dir>/<basename>-<step>`, atomically, and keep the newest `keep` checkpoints.

    A failure (a full disk, no permission) is a CheckpointError naming the checkpoint and the
    reason; it leaves no new file behind and the state file still names the previous checkpoint."""
    names = sorted(tensors)
    arrays = [np.asarray(tensors[n]) for n in names]
    names.append(GLOBAL_STEP)
    arrays.append(np.asarray(step, np.int64))
    final = os.path.join(model_dir, "%s-%d" % (basename, step))
    tmp = os.path.join(model_dir, "%s%s-%d-%d" % (TMP_PREFIX, basename, step, os.getpid()))
    state = _state(model_dir)
    previous = [os.path.basename(p) for p in state.all_model_checkpoint_paths] if state is not None else []
    placed = []
    try:
        if not os.path.isdir(model_dir):
            os.makedirs(model_dir)
        tf.raw_ops.SaveV2(prefix=tmp, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[tf.constant(a) for a in arrays])
        for f in _checkpoint_files(tmp):  # data shards first, the index last: no index without its data
            os.replace(f, final + f[len(tmp):])
            placed.append(final + f[len(tmp):])
        kept = [p for p in previous if p != os.path.basename(final)] + [os.path.basename(final)]
        dropped, kept = kept[:-keep] if keep else [], kept[-keep:] if keep else kept
        _write_state(model_dir, kept)
    except (OSError, tf.errors.OpError, WriteError) as e:
        for f in placed:  # not named by the state file: not saved
            if os.path.exists(f):
                os.remove(f)
        still = (" (%s is still the latest)" % os.path.basename(state.model_checkpoint_path)) if state else ""
        raise CheckpointError("cannot save checkpoint %s: %s%s" % (final, file_reason(e), still))
    finally:
        for f in glob.glob(glob.escape(tmp) + "*"):
            os.remove(f)
    for old in dropped:
        for f in _checkpoint_files(os.path.join(model_dir, old)):
            if os.path.exists(f):
                os.remove(f)
    return final


def _write_state(model_dir, paths):
    """The text `checkpoint` file TF1's Saver keeps (relative paths, newest last), replaced atomically."""
    text = 'model_checkpoint_path: "%s"\n' % paths[-1]
    text += "".join('all_model_checkpoint_paths: "%s"\n' % p for p in paths)
    fileio.write_text(os.path.join(model_dir, STATE_FILE), text)


def _state(model_dir):
    """The parsed state file, or None when there is none or it cannot be parsed (TensorFlow logs a
    parse error and returns None; some damage raises instead)."""
    try:
        return tf.train.get_checkpoint_state(model_dir)
    except (tf.errors.OpError, ValueError):
        return None
