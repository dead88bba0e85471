"""Training configuration: YAML recipes layered as base.yaml <- recipe <- `--set section.key=value`
(as TF Model Garden does), resolved into the typed sections below.

base.yaml holds every key with its default and the dataclasses give each key its type, so a key
base.yaml lacks is an error with a suggestion and a value of the wrong type is an error naming
the key. A few keys apply only with one choice of another (APPLIES_ONLY: the schedule's own
keys, the CPU's replica count, mixed_float16's loss scale); a recipe or --set that gives one with
another choice is an error, and it holds None. So every key a recipe states is one the run
honours. The resolved config is saved next to the checkpoints it produced (config.yaml in the
model dir) with the keys that applied.

A saved config.yaml is read more leniently, because runs saved by older versions of mbv3 stay
on disk and are exported later: a renamed key is read under its new name and a key this version
does not have is dropped, both said in one warning line, and a key that did not apply is dropped
silently.
No TensorFlow here: export reads run configs (mbv3.runinfo) without it.
"""
import copy
import dataclasses
import difflib
import io
import os
from dataclasses import dataclass
from typing import Optional, Union

import yaml

from . import fileio
from .console import say
from .errors import MbV3Error, first_line
from .targets import NAMES as TARGET_NAMES, PRECISIONS

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
BASE = "base.yaml"
SAVED_NAME = "config.yaml"
SCHEDULES = ("cosine", "exponential", "constant")


class ConfigError(MbV3Error):
    pass


@dataclass
class ModelSection:
    variant: str                    # specs.VARIANTS, checked when the network is built
    multiplier: float
    num_classes: Optional[int]      # None: the data set's
    bn_decay: float
    bn_epsilon: float
    dropout_keep: float


@dataclass
class DataSection:
    image_size: int
    train_split: str
    train_examples: Optional[int]   # None: counted by `mbv3 data build`
    shuffle_buffer: int
    crop_area_min: Optional[float]  # None: tf_preprocess.AREA_RANGE's
    flip: bool
    deterministic: bool
    seed: Optional[int]


@dataclass
class TrainSection:
    batch_size: int
    epochs: float
    steps: Optional[int]
    momentum: float
    learning_rate: float
    lr_schedule: str                # SCHEDULES
    warmup_epochs: float
    min_learning_rate: Optional[float]   # cosine only
    lr_decay_factor: Optional[float]     # exponential only
    epochs_per_decay: Optional[float]    # exponential only
    weight_decay: float
    label_smoothing: float
    ema_decay: float
    init_from: Optional[str]
    init_keep_step: bool
    reinit_classifier: bool
    seed: int


@dataclass
class TargetSection:
    name: str                       # targets.NAMES
    xla: bool
    precision: str                  # PRECISIONS; the target checks it offers it
    steps_per_loop: int
    cpu_replicas: Optional[int]     # cpu only
    loss_scale: Union[float, str, None]   # mixed_float16 only: "dynamic" or a fixed scale

    def to_dict(self):
        """The section as the targets take it (targets.get)."""
        return dataclasses.asdict(self)


@dataclass
class CheckpointSection:
    every_steps: int
    keep: int


@dataclass
class LogSection:
    every_steps: int
    summaries: bool


@dataclass
class TrainingConfig:
    """A resolved recipe: what `mbv3 train` runs and saves as config.yaml."""
    model: ModelSection
    data: DataSection
    train: TrainSection
    target: TargetSection
    checkpoint: CheckpointSection
    log: LogSection
    source: str = "defaults"        # where it was resolved from, for the saved file's header

    def to_dict(self):
        """{section: {key: value}} of the keys that apply, in base.yaml's order."""
        out = {}
        for f in _section_fields():
            section = getattr(self, f.name)
            out[f.name] = dict((k.name, copy.deepcopy(getattr(section, k.name))) for k in dataclasses.fields(section)
                               if _applies(self, f.name, k.name))
        return out

    def dump(self):
        return yaml.safe_dump(self.to_dict(), default_flow_style=False, sort_keys=False)

    def save(self, directory):
        return fileio.write_text(os.path.join(directory, SAVED_NAME),
                                 u"# resolved from %s\n" % (self.source or "defaults") + self.dump())


# key -> (the key that decides, the values with which it applies); otherwise it holds None
APPLIES_ONLY = {
    ("train", "min_learning_rate"): (("train", "lr_schedule"), ("cosine",)),
    ("train", "lr_decay_factor"): (("train", "lr_schedule"), ("exponential",)),
    ("train", "epochs_per_decay"): (("train", "lr_schedule"), ("exponential",)),
    ("target", "cpu_replicas"): (("target", "name"), ("cpu",)),
    ("target", "loss_scale"): (("target", "precision"), ("mixed_float16",)),
}
CHOICES = {("train", "lr_schedule"): SCHEDULES, ("target", "name"): TARGET_NAMES, ("target", "precision"): PRECISIONS}


def _section_fields():
    return [f for f in dataclasses.fields(TrainingConfig) if f.name != "source"]


def _decider_value(values, key):
    """The deciding key's value in `values` (a TrainingConfig or {section: {key: value}}), lower case."""
    section, name = key
    if isinstance(values, TrainingConfig):
        return str(getattr(getattr(values, section), name)).lower()
    return str(values[section][name]).lower()


def _applies(values, section, key):
    rule = APPLIES_ONLY.get((section, key))
    return rule is None or _decider_value(values, rule[0]) in rule[1]


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _coerce(value, kind, name):
    """`value` as the field type `kind` (int, float, str, bool, or a Union/Optional of them)."""
    options = kind.__args__ if getattr(kind, "__origin__", None) is Union else (kind,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if option is int and isinstance(value, int):
            return value
        if option is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if option is float and isinstance(value, (int, float)):
            return float(value)
        if option is str and isinstance(value, str):
            return value
    if float in options and isinstance(value, str):
        try:
            return float(value)   # YAML 1.1 reads 4e-5 (no dot) as a string
        except ValueError:
            pass
    raise ConfigError("%s must be %s, got %r" % (name, " or ".join(_KIND_NAMES[o] for o in options), value))


def _resolve(values, given, source, strict=True):
    """TrainingConfig from {section: {key: value}}; `given` maps (section, key) to where a recipe,
    --set or saved file set it (for errors). strict=False drops given keys that do not apply."""
    sections = {}
    for section_field in _section_fields():
        section = section_field.name
        kwargs = {}
        for f in dataclasses.fields(section_field.type):
            kwargs[f.name] = None
            if _applies(values, section, f.name):
                kwargs[f.name] = _checked(section, f, values[section][f.name], _where(given, section, f.name))
        sections[section] = section_field.type(**kwargs)
    for key, rule in APPLIES_ONLY.items():
        if strict and key in given and not _applies(values, *key):
            decider = "%s.%s" % rule[0]
            raise ConfigError("%s: %s.%s applies only with %s %s, and %s is %s; leave it out"
                              % (given[key], key[0], key[1], decider, " or ".join(rule[1]), decider,
                                 values[rule[0][0]][rule[0][1]]))
    return TrainingConfig(source=source, **sections)


def _where(given, section, key):
    return given.get((section, key), os.path.join(CONFIG_DIR, BASE))


def _checked(section, field, value, where):
    """One value as its field's type, within its choices; a ConfigError names the key and `where`."""
    name = "%s.%s" % (section, field.name)
    try:
        value = _coerce(value, field.type, name)
    except ConfigError as e:
        raise ConfigError("%s: %s" % (where, e))
    choices = CHOICES.get((section, field.name))
    if choices and value not in choices:
        raise ConfigError("%s: %s must be one of %s, got %r" % (where, name, ", ".join(choices), value))
    if name == "data.crop_area_min" and value is not None and not 0.0 < value <= 1.0:
        raise ConfigError("%s: data.crop_area_min must be in (0, 1], got %r" % (where, value))
    if name == "target.loss_scale" and isinstance(value, str) and value != "dynamic":
        try:
            value = float(value)
        except ValueError:
            raise ConfigError("%s: target.loss_scale must be dynamic or a number, got %r" % (where, value))
    return value


def recipe_names():
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml") and f != BASE)


def _read_yaml(path):
    try:
        with io.open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (IOError, OSError) as e:
        raise ConfigError("cannot read config %s: %s" % (path, e.strerror or e))
    except yaml.YAMLError as e:
        raise ConfigError("config %s is not valid YAML: %s" % (path, first_line(e)))
    if not isinstance(data, dict):
        raise ConfigError("config %s must be a mapping of sections" % path)
    return data


def _base():
    """base.yaml, checked against the dataclasses: a key in one and not the other is a packaging bug."""
    path = os.path.join(CONFIG_DIR, BASE)
    values = _read_yaml(path)
    declared = dict((f.name, [k.name for k in dataclasses.fields(f.type)]) for f in _section_fields())
    found = dict((s, list(v or {})) for s, v in values.items())
    if declared != found:
        raise ConfigError("%s does not match the sections in %s (%s against %s)" % (path, __file__, found, declared))
    return values


def _recipe_path(recipe):
    if os.path.exists(recipe):
        return recipe
    packaged = os.path.join(CONFIG_DIR, recipe if recipe.endswith(".yaml") else recipe + ".yaml")
    if os.path.exists(packaged):
        return packaged
    raise ConfigError("no recipe %r: give a YAML file or one of %s" % (recipe, ", ".join(recipe_names())))


# keys older recipes may still hold, with what does their job
NOT_SETTINGS = {
    "train.optimizer": "the update is always momentum's, set by train.momentum",
    "data.eval_split": "`mbv3 eval --split` chooses the split it scores",
    "target.mixed_precision": "renamed target.precision: %s" % ", ".join(PRECISIONS),
}


def _old_mixed_precision(value, target):
    """target.mixed_precision (none | float16 | bfloat16) as a target.precision; `none` on the NPU ran
    its precision_mode allow_fp32_to_fp16, which is float16_matmul."""
    old = str(value).lower()
    if old == "none":
        return "float16_matmul" if str(target.get("name")).lower() == "npu" else "float32"
    return {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}.get(old, value)


# keys older versions saved under another name: (section, old) -> (new, the old value as a new one)
RENAMED = {("target", "mixed_precision"): ("precision", _old_mixed_precision)}


def _read_renamed(data):
    """Move renamed keys of a saved file to their new names in place; one note per key moved."""
    notes = []
    for (section, old), (new, convert) in RENAMED.items():
        values = data.get(section)
        if isinstance(values, dict) and old in values:
            value = values.pop(old)
            if new in values:
                notes.append("ignoring %s.%s, %s.%s is set" % (section, old, section, new))
                continue
            values[new] = convert(value, values)
            notes.append("read %s.%s %s as %s.%s %s (renamed)" % (section, old, value, section, new, values[new]))
    return notes


def _unknown(key, known):
    if key in NOT_SETTINGS:
        return "unknown config key %s (%s)" % (key, NOT_SETTINGS[key])
    close = difflib.get_close_matches(key, known, n=1)
    return "unknown config key %s%s" % (key, " (did you mean %s?)" % close[0] if close else "")


def _merge(base, override, where, given, unknown=None):
    """Override base's values in place, recording in `given` where each came from. A key base does
    not have is an error, or with `unknown` (a list) is appended there and skipped."""
    for section, values in override.items():
        if section not in base:
            if unknown is not None:
                unknown.extend(["%s.%s" % (section, k) for k in values] if isinstance(values, dict) else [section])
                continue
            raise ConfigError("%s: %s" % (where, _unknown(section, list(base))))
        if not isinstance(values, dict):
            raise ConfigError("%s: section %s must be a mapping" % (where, section))
        for key, value in values.items():
            if key not in base[section]:
                if unknown is not None:
                    unknown.append("%s.%s" % (section, key))
                    continue
                raise ConfigError("%s: %s" % (where, _unknown("%s.%s" % (section, key),
                                                              ["%s.%s" % (section, k) for k in base[section]])))
            base[section][key] = value
            given[(section, key)] = where


def parse_override(text):
    """`section.key=value` with the value parsed as YAML (numbers, booleans, null, lists)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError("--set takes section.key=value, got %r" % text)
    key, raw = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return {section: {name: value}}


def load(recipe=None, overrides=()):
    """base.yaml, then the recipe (a path or a packaged name), then each `section.key=value` override."""
    values, given = _base(), {}
    source = BASE
    if recipe:
        path = _recipe_path(recipe)
        _merge(values, _read_yaml(path), path, given)
        source = os.path.abspath(path)
    for text in overrides:
        _merge(values, parse_override(text), "--set %s" % text, given)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return _resolve(values, given, source)


def load_saved(directory, log=say):
    """The config.yaml a training run saved, or None (see the module docstring for old keys)."""
    path = os.path.join(directory, SAVED_NAME)
    if not os.path.exists(path):
        return None
    values, given, unknown = _base(), {}, []
    saved = _read_yaml(path)
    notes = _read_renamed(saved)
    _merge(values, saved, path, given, unknown=unknown)
    if unknown:
        notes.insert(0, "ignoring %s, not settings of this mbv3 version" % ", ".join(unknown))
    if notes:
        log("warning: %s: %s" % (path, "; ".join(notes)))
    return _resolve(values, given, os.path.abspath(path), strict=False)
