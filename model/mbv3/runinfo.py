"""What a training run recorded beside its checkpoints, and export's flags reconciled with it.

`mbv3 train` saves the resolved recipe as config.yaml and the data set's labels.txt in the model
dir. A bundle exported from that dir takes from them what the run trained and evaluated with
(input size, labels, which weights), so it serves the accuracy `mbv3 eval` reported. A flag that
contradicts the run is an error naming both values; with `override` the flag wins and the bundle
records the difference. A checkpoint with no config.yaml beside it (TF-slim's official one) is a
bare checkpoint: the TF-slim defaults apply and the flags are taken as given.
No TensorFlow here: it reads YAML and text.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import bundle, config as config_mod
from .errors import MbV3Error

OVERRIDE_FLAG = "--override-run"


@dataclass
class Run:
    """A training run's folder, its saved config and (when it has one) its labels.txt."""
    folder: str
    config: config_mod.TrainingConfig
    labels_path: Optional[str] = None

    @property
    def config_path(self):
        return os.path.join(self.folder, config_mod.SAVED_NAME)

    @property
    def image_size(self):
        size = self.config.data.image_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise MbV3Error("%s: data.image_size must be a positive integer, got %r" % (self.config_path, size))
        return size

    @property
    def num_classes(self):
        """The configured classifier size, or None when the run took it from its data set."""
        return self.config.model.num_classes

    @property
    def numerics(self):
        """The batch-norm epsilon (and the rest of net.Numerics) the run trained with: inference
        normalises with the same epsilon, so eval and export must not assume the default."""
        from . import net
        m = self.config.model
        return net.Numerics(bn_decay=m.bn_decay, bn_epsilon=m.bn_epsilon, dropout_keep=m.dropout_keep)


def find(prefix):
    """The run a checkpoint belongs to (config.yaml in its folder), or None for a bare checkpoint."""
    folder = os.path.dirname(os.path.abspath(prefix))
    cfg = config_mod.load_saved(folder)
    if cfg is None:
        return None
    labels = os.path.join(folder, bundle.LABELS)
    return Run(folder, cfg, labels if os.path.exists(labels) else None)


def numerics(prefix):
    """net.Numerics of the checkpoint's run, or None (net's defaults, TF-slim's) for a bare checkpoint."""
    run = find(prefix)
    return run.numerics if run is not None else None


def image_size(prefix, given=None):
    """`given`, else the size the checkpoint's run trained at, else the TF-slim default."""
    if given:
        return int(given)
    run = find(prefix)
    return run.image_size if run is not None else bundle.DEFAULT_SIZE


@dataclass
class Choice:
    """What export writes, and where each part came from."""
    size: int
    use_ema: Optional[bool]                  # None: the checkpoint's EMA shadows when it has them
    labels: List[str]
    run: Optional[Run] = None
    differs: Dict[str, Any] = field(default_factory=dict)   # model.json's source.differs_from_run
    size_given: bool = False

    def describe(self, prep, weights):
        """One line saying where the bundle's settings came from (prep: its Preprocessing record)."""
        if self.run is None:
            return ("bare checkpoint (no %s beside it): input %dx%d%s, TF-slim's eval preprocessing (central "
                    "%g%% crop, pixels to [-1, 1]), %s weights" % (
                        config_mod.SAVED_NAME, prep.height, prep.width,
                        "" if self.size_given else " (the default; --image-size sets another)",
                        prep.crop_fraction * 100, weights))
        line = "from the run %s: input %dx%d, central %g%% crop, %s weights, %d labels" % (
            self.run.folder, prep.height, prep.width, prep.crop_fraction * 100, weights, len(self.labels))
        if self.differs:
            line += "; overridden with %s: %s" % (OVERRIDE_FLAG, ", ".join(
                "%s %s instead of %s" % (k, _show(v["bundle"]), _show(v["run"])) for k, v in sorted(self.differs.items())))
        return line


def _show(value):
    if isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
        return "%sx%s" % tuple(value)
    return str(value)


def choose(reader, arch, image_size=None, use_ema=None, labels_file=None, override=False):
    """Settle export's flags against the checkpoint's run (see the module docstring)."""
    run = find(reader.prefix)
    if run is None:
        return Choice(size=int(image_size or bundle.DEFAULT_SIZE), use_ema=use_ema, size_given=bool(image_size),
                      labels=_bare_labels(arch.num_classes, labels_file, reader.prefix))
    _check_architecture(run, arch, reader.prefix)
    differs = {}

    def conflict(field_name, flag, run_says, hint, run_value, bundle_value):
        if not override:
            raise MbV3Error("%s contradicts the run: %s; leave %s out to export what the run trained, or add %s "
                            "to export it anyway (model.json then records the difference)"
                            % (flag, run_says, hint, OVERRIDE_FLAG))
        differs[field_name] = {"run": run_value, "bundle": bundle_value}

    size = run.image_size
    if image_size and int(image_size) != size:
        conflict("preprocessing.size", "--image-size %d" % image_size,
                 "%s says data.image_size: %d" % (run.config_path, size), "--image-size",
                 [size, size], [int(image_size), int(image_size)])
        size = int(image_size)

    if use_ema is False and reader.has_ema:
        conflict("source.weights", "--no-ema", "%s has EMA weights, which `mbv3 eval` of the run uses" % reader.prefix,
                 "--no-ema", "ema", "raw")

    labels = None
    if run.labels_path:
        labels = bundle.read_labels(run.labels_path, arch.num_classes)
    if labels_file:
        mine = bundle.read_labels(labels_file, arch.num_classes)
        if labels is not None and mine != labels:
            at = next(i for i, (a, b) in enumerate(zip(mine, labels)) if a != b)
            conflict("labels", "--labels %s" % labels_file,
                     "class %d is %r in %s but %r in the run's %s" % (at, mine[at], labels_file, labels[at],
                                                                      run.labels_path),
                     "--labels", os.path.abspath(run.labels_path), os.path.abspath(labels_file))
        labels = mine
    if labels is None:
        labels = bundle.default_labels(arch.num_classes)
    return Choice(size=size, use_ema=use_ema, labels=labels, run=run, differs=differs)


def _check_architecture(run, arch, prefix):
    """The run's config describes this checkpoint (a checkpoint copied into another run's folder does not)."""
    model = run.config.model
    configured = (model.variant, model.multiplier)
    if configured != (arch.variant, arch.multiplier):
        raise MbV3Error("checkpoint %s holds MobileNetV3 %s %s, but %s says %s %s: it is not this checkpoint's run"
                        % (prefix, arch.variant, arch.multiplier, run.config_path, configured[0], configured[1]))
    if run.num_classes is not None and run.num_classes != arch.num_classes:
        raise MbV3Error("checkpoint %s has a %d-class classifier, but %s says model.num_classes: %s: "
                        "it is not this checkpoint's run" % (prefix, arch.num_classes, run.config_path, run.num_classes))


def _bare_labels(num_classes, labels_file, prefix):
    """--labels, else a labels.txt beside the checkpoint, else ImageNet's names (or placeholders)."""
    if labels_file:
        return bundle.read_labels(labels_file, num_classes)
    beside = os.path.join(os.path.dirname(prefix), bundle.LABELS)
    if os.path.exists(beside):
        return bundle.read_labels(beside, num_classes)
    return bundle.default_labels(num_classes)
