"""dataset.json as a typed record, `DatasetInfo`, the one way it is read and written.

A built data set's dataset.json says what `mbv3 data build` made of an image folder: the classes,
each split's shards (with their counts once written), every input file passed over and why, and a
fingerprint of the inputs so an interrupted build resumes only over the same inputs. The build
rewrites it as each shard lands (`complete` false until the end); training and evaluation read it
only when complete. Reading checks every field's type, so a damaged or hand-edited file is one
line naming the field. This module does not import TensorFlow: the CLI checks a data set before
paying for TensorFlow's start-up.
"""
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .. import fileio
from ..bundle import from_plain, to_plain
from ..errors import BundleError, MbV3Error

FORMAT = "mbv3-tfrecords"
FORMAT_VERSION = 1
METADATA = "dataset.json"
LABELS = "labels.txt"
TRAIN, VALIDATION = "train", "validation"
SPLITS = (TRAIN, VALIDATION)
SPLIT_ALIASES = {"val": VALIDATION, "eval": VALIDATION}
LABEL_OFFSET = 1


class DataError(MbV3Error):
    pass


@dataclass
class Shard:
    """One TFRecord file; the counts are there once it is written (a pending shard has none)."""
    file: str
    images: int                         # images assigned to it
    records: Optional[int] = None       # images written
    skipped: Optional[int] = None       # images that could not be read
    converted: Optional[int] = None     # images re-encoded as JPEG

    @property
    def written(self):
        return self.records is not None


@dataclass
class Split:
    """A split's shards and counts; the totals are filled in when the build finishes."""
    shards: List[Shard]
    files: int                          # image files planned
    ignored: int                        # other paths passed over
    written: Optional[int] = None
    skipped: Optional[int] = None
    converted: Optional[int] = None
    num_examples: Optional[int] = None  # = written, the name TF-slim's readers use


@dataclass
class Skipped:
    """An input path the data set does not hold: passed over while planning (shard None), or an
    unreadable image found while writing `shard`."""
    path: str
    reason: str
    split: Optional[str]
    shard: Optional[str] = None


@dataclass
class DatasetInfo:
    format: str
    format_version: int
    complete: bool
    created: str
    mbv3_version: str
    source: str                         # the image folder
    labels_file: Optional[str]
    val_labels_file: Optional[str]
    num_classes: int                    # classes + background
    label_offset: int
    classes: List[str]
    texts: List[str]                    # readable names, as labels.txt
    inputs: Dict[str, Any]              # seed, val_split, counts and the fingerprint of the inputs
    splits: Dict[str, Split] = field(default_factory=dict)
    skipped: List[Skipped] = field(default_factory=list)

    @property
    def fingerprint(self):
        return self.inputs.get("fingerprint")

    def split(self, name, data_dir):
        """(name, Split) of a split with shards: `val` and `eval` name the validation split; a split
        without shards is an error naming the splits there are."""
        name = SPLIT_ALIASES.get(name, name)
        record = self.splits.get(name)
        if record is None or not record.shards:
            raise DataError("data set %s has no shards for split %r (it has: %s)"
                            % (data_dir, name, ", ".join(sorted(self.splits)) or "none"))
        return name, record

    def to_dict(self):
        return to_plain(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data, where=METADATA):
        if not isinstance(data, dict):
            raise DataError("%s: expected a JSON object, got %s" % (where, type(data).__name__))
        if data.get("format") != FORMAT:
            raise DataError("%s is not an %s file" % (where, FORMAT))
        if data.get("format_version") != FORMAT_VERSION:
            raise DataError("%s: format_version %r is not %d, the one this mbv3 reads"
                            % (where, data.get("format_version"), FORMAT_VERSION))
        try:
            info = from_plain(cls, data, where)
        except BundleError as e:   # the shared JSON-to-record walk names the field
            raise DataError(str(e))
        problem = info.check()
        if problem:
            raise DataError("%s: %s" % (where, problem))
        return info

    def check(self):
        """The cross-field rules: None, or the first broken one."""
        if self.label_offset != LABEL_OFFSET:
            return "label_offset must be %d, got %r" % (LABEL_OFFSET, self.label_offset)
        if self.num_classes != len(self.classes) + self.label_offset:
            return "num_classes %d does not match %d classes + %d" % (self.num_classes, len(self.classes),
                                                                    self.label_offset)
        if len(self.texts) != len(self.classes):
            return "%d texts for %d classes" % (len(self.texts), len(self.classes))
        for name, record in self.splits.items():
            if self.complete and any(not s.written for s in record.shards):
                return "splits.%s: a complete data set with a shard not written" % name
            if self.complete and record.written is None:
                return "splits.%s.written is missing" % name
        if not isinstance(self.fingerprint, str):
            return "inputs.fingerprint must be a string, got %r" % (self.fingerprint,)
        return None


def read(path):
    """The DatasetInfo in the dataset.json at `path` (complete or not)."""
    try:
        with io.open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (IOError, OSError) as e:
        raise DataError("cannot read %s: %s" % (path, e.strerror or e))
    except ValueError as e:
        raise DataError("%s is not valid JSON (%s)" % (path, e))
    return DatasetInfo.from_dict(data, path)


def write(path, info):
    """dataset.json (atomically: a reader never sees half of it)."""
    fileio.write_text(path, info.to_json())


def load(data_dir):
    """The DatasetInfo of a finished data set in `data_dir`; an absent, foreign or interrupted one is
    an error saying which."""
    data_dir = os.path.expanduser(str(data_dir))
    if not os.path.isdir(data_dir):
        raise DataError("no data set at %s (not a directory)" % data_dir)
    path = os.path.join(data_dir, METADATA)
    if not os.path.exists(path):
        raise DataError("%s holds no %s: not a data set written by `mbv3 data build` (mbv3.data.build)"
                        % (data_dir, METADATA))
    info = read(path)
    if not info.complete:
        raise DataError("data set %s is incomplete (its build was interrupted); run the build again" % data_dir)
    return info
