"""Recipes: YAML files layered as base.yaml <- recipe <- `--set key=value`, as TF Model Garden does.

Every key must exist in base.yaml, so a typo is an error rather than a silently ignored setting.
The resolved config is written next to the checkpoints it produced (config.yaml in the model dir).
"""
from __future__ import absolute_import, division, print_function

import copy
import difflib
import io
import os

import yaml

from . import fileio
from .errors import MbV3Error, first_line

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
SAVED_NAME = "config.yaml"


class ConfigError(MbV3Error):
    pass


class Section(object):
    """Attribute access over one level of the config (cfg.train.batch_size)."""

    def __init__(self, values):
        self.__dict__.update(values)

    def get(self, key, default=None):
        return self.__dict__.get(key, default)


class Config(object):
    def __init__(self, values, source=None):
        self.values = values
        self.source = source
        for name, section in values.items():
            setattr(self, name, Section(section))

    def to_dict(self):
        return copy.deepcopy(self.values)

    def dump(self):
        return yaml.safe_dump(self.values, default_flow_style=False, sort_keys=False)

    def save(self, directory):
        return fileio.write_text(os.path.join(directory, SAVED_NAME),
                                 u"# resolved from %s\n" % (self.source or "defaults") + self.dump())


def recipe_names():
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml") and f != "base.yaml")


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


def _recipe_path(recipe):
    if os.path.exists(recipe):
        return recipe
    packaged = os.path.join(CONFIG_DIR, recipe if recipe.endswith(".yaml") else recipe + ".yaml")
    if os.path.exists(packaged):
        return packaged
    raise ConfigError("no recipe %r: give a YAML file or one of %s" % (recipe, ", ".join(recipe_names())))


def _unknown(key, known):
    close = difflib.get_close_matches(key, known, n=1)
    return "unknown config key %s%s" % (key, " (did you mean %s?)" % close[0] if close else "")


def _merge(base, override, where):
    for section, values in override.items():
        if section not in base:
            raise ConfigError("%s: %s" % (where, _unknown(section, list(base))))
        if not isinstance(values, dict):
            raise ConfigError("%s: section %s must be a mapping" % (where, section))
        for key, value in values.items():
            if key not in base[section]:
                raise ConfigError("%s: %s" % (where, _unknown("%s.%s" % (section, key),
                                                              ["%s.%s" % (section, k) for k in base[section]])))
            base[section][key] = value


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


def load(recipe=None, overrides=(), base_values=None):
    """base.yaml, then the recipe (a path or a packaged name), then each `section.key=value` override."""
    values = base_values if base_values is not None else _read_yaml(os.path.join(CONFIG_DIR, "base.yaml"))
    values = copy.deepcopy(values)
    source = "base.yaml"
    if recipe:
        path = _recipe_path(recipe)
        _merge(values, _read_yaml(path), path)
        source = os.path.abspath(path)
    for text in overrides:
        _merge(values, parse_override(text), "--set %s" % text)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return Config(values, source)


def load_saved(directory):
    """The config.yaml a training run saved, or None."""
    path = os.path.join(directory, SAVED_NAME)
    if not os.path.exists(path):
        return None
    return load(path, base_values=_read_yaml(os.path.join(CONFIG_DIR, "base.yaml")))
