"""The model bundle: the directory `mbv3 export` writes and every server loads.

    model.onnx   ONNX Runtime (any CPU)
    model.pb     frozen GraphDef for ATC (input `input`, output `logits`)
    model.om     later, written by `mbv3 om` on a CANN machine (with aipp.cfg when AIPP is folded in)
    model.json   ModelInfo below: source, architecture, input/output, preprocessing, labels, sha256s,
                 and the reduced-precision variants validated against float32 (PrecisionVariant)
    labels.txt   one label per class index (index 0 = background for slim's 1001 classes)

`ModelInfo` is the one definition of model.json: export and `mbv3 om` write through it, the service,
`mbv3 predict` and `mbv3 verify` read through it, and a file that does not fit it is refused with
the field named. No TensorFlow here: the inference service imports this module.
"""
import dataclasses
import functools
import hashlib
import io
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from . import specs
from .errors import BundleError

FORMAT = "mbv3-bundle"
FORMAT_VERSION = 1
METADATA = "model.json"
LABELS = "labels.txt"
ONNX = "model.onnx"
FROZEN = "model.pb"
OM = "model.om"
AIPP_FILE = "aipp.cfg"
BACKGROUND = "background"
MAX_METADATA_BYTES = 1 << 20   # model.json is a few KB; a larger file is not ours
DEFAULT_SIZE = 224             # TF-slim's ImageNet models; a bundle exported from a run has the run's size
_RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")


# --- typed records ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _row_factors(mean, std, pixel_max, width):
    """Preprocessing.normalize's per-channel scale and offset, repeated `width` times."""
    std = np.asarray(std, np.float32)
    scale = np.float32(1.0 / pixel_max) / std
    offset = np.asarray(mean, np.float32) / std
    return np.tile(scale, width), np.tile(offset, width)


@dataclass
class Preprocessing:
    """How an encoded image becomes the model's input (timm-style, plus what timm leaves implicit).

    Training's eval transform (mbv3.tf_preprocess), the server's NumPy transform (mbv3.numpy_preprocess)
    and the AIPP stage ATC folds into an .om all derive their arithmetic from this record:
    pixels / pixel_max, then (x - mean) / std, after a central crop and a bilinear resize."""
    size: List[int] = field(default_factory=lambda: [DEFAULT_SIZE, DEFAULT_SIZE])   # [height, width]
    color: str = "RGB"
    crop_fraction: float = 0.875
    resize: str = "bilinear"
    half_pixel_centers: bool = True
    antialias: bool = False
    pixel_max: float = 255.0
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def check(self):
        if len(self.size) != 2 or min(self.size) < 1:
            return "size must be [height, width] of positive integers, got %s" % self.size
        if not 0.0 < self.crop_fraction <= 1.0:
            return "crop_fraction must be in (0, 1], got %s" % self.crop_fraction
        if self.resize != "bilinear" or self.color != "RGB":
            return "only RGB with a bilinear resize is implemented, got %s / %s" % (self.color, self.resize)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0 or self.pixel_max <= 0:
            return "mean and std need 3 values (std > 0) and pixel_max > 0"
        return None

    @property
    def height(self):
        return int(self.size[0])

    @property
    def width(self):
        return int(self.size[1])

    def standardize(self, unit):
        """(x - mean) / std of float32 pixels already scaled to [0, 1]."""
        return ((unit - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)

    def normalize(self, pixels):
        """float32 model input from pixels in [0, pixel_max] (any numeric array, ... x 3): standardize's
        values to float32 rounding, as one multiply and one subtract, x * 1 / (pixel_max * std) - mean / std,
        each row taken as W*3 values with the channels' factors repeated along it (broadcasting a
        3-vector makes NumPy's innermost loop three long: 0.4 ms of 0.5 ms on a 224x224 image)."""
        pixels = np.asarray(pixels)
        width = pixels.shape[-2] if pixels.ndim >= 2 else 1
        scale, offset = _row_factors(tuple(self.mean), tuple(self.std), float(self.pixel_max), width)
        x = np.multiply(pixels.reshape(-1, width * 3), scale, dtype=np.float32)
        x -= offset
        return x.reshape(pixels.shape)

    def denormalize(self, values):
        """uint8 pixels from model input values: the inverse of normalize, rounded and clipped."""
        unit = np.asarray(values, np.float32) * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)
        return np.clip(np.round(unit * np.float32(self.pixel_max)), 0, 255).astype(np.uint8)

    def aipp_channels(self):
        """Per channel (min_chn, var_reci_chn) for ATC's AIPP: out = (in - min_chn) * var_reci_chn,
        which is normalize() on uint8 input."""
        return [(float(m) * self.pixel_max, 1.0 / (float(s) * self.pixel_max)) for m, s in zip(self.mean, self.std)]


@dataclass
class Source:
    checkpoint: str
    step: Optional[int] = None
    weights: str = "raw"                      # "ema" or "raw"
    run: Optional[str] = None                 # the training run folder whose config.yaml export read
    differs_from_run: Optional[Dict[str, Any]] = None   # {field: {"run": x, "bundle": y}} when overridden


@dataclass
class TensorInfo:
    name: str
    shape: List[int]
    dtype: str = "float32"
    layout: Optional[str] = None              # input: "NHWC"
    range: Optional[List[float]] = None       # input: the normalised value range
    kind: Optional[str] = None                # output: "logits"
    num_classes: Optional[int] = None         # output: classes (= labels)


@dataclass
class LabelInfo:
    file: str = LABELS
    label_offset: int = 0                     # 1 when index 0 is slim's background class
    background_index: Optional[int] = None


@dataclass
class FileInfo:
    sha256: str
    bytes: int


@dataclass
class OmInfo:
    """How `mbv3 om` built model.om; the ACL backend reads what the card expects from here."""
    file: str = OM
    batch_profiles: Optional[List[int]] = None
    aipp: bool = False                        # True: normalisation is inside the model, input is uint8 RGB
    soc_version: str = "Ascend310"
    input_dtype: str = "float32"


# Reduced-precision variants a bundle may record (PrecisionVariant.precision). bf16 is an engine
# setting on model.onnx; int8 is a quantized model of its own, named by `file` and hashed in `files`.
PRECISIONS = ("bf16", "int8")


@dataclass
class Accuracy:
    """Top-1 / top-5 as fractions of the images scored (mbv3.scoring's)."""
    top1: float
    top5: float


@dataclass
class Speed:
    """Model-only throughput measured in the same run for float32 and the variant: same engine, same
    threads, same batch, inputs already preprocessed. The service's PRECISION=auto ranks variants by it."""
    batch: int
    threads: int                    # the engine's inference threads (0: the engine's choice)
    float32: float                  # images per second
    reduced: float

    @property
    def ratio(self):
        return self.reduced / self.float32 if self.float32 > 0 else 0.0


@dataclass
class Calibration:
    """The images an int8 model's activation ranges were calibrated on (never the scored split)."""
    source: str                     # the data set or image folder (absolute path)
    split: Optional[str]            # its split, for a TFRecord data set; None for an image folder
    images: int                     # how many were used
    method: str                     # e.g. "nncf 3.4.0 post-training (onnx, bias correction)"


@dataclass
class PrecisionVariant:
    """A reduced-precision way to run this bundle, validated against float32 on held-out data: a
    server may use it only because this record says what it loses. `mbv3 quantize` writes it; the
    service's CPU backends read it (PRECISION). Keyed by (precision, engine): a
    later validation of the same pair replaces the earlier one."""
    precision: str                  # one of PRECISIONS
    engine: str                     # the engine it was measured on: "openvino" or "onnxruntime"
    engine_version: str
    device: str                     # the engine's device: "CPU" (OpenVINO's CPU plugin)
    device_name: str                # what the engine calls that device (the CPU's model name)
    model_sha256: str               # the model measured (model.onnx's, or `file`'s): a re-export voids it
    data: str                       # the data set (absolute path) and its held-out split
    split: str
    examples: int                   # images scored (the split's size less skipped records)
    float32: Accuracy
    reduced: Accuracy
    top1_agreement: float           # fraction of images whose top-1 equals float32's
    max_top1_drop: float            # the threshold, in points of top-1 (percent)
    top1_drop: float                # float32's top-1 minus the variant's, in points
    forced: bool                    # recorded past the threshold, or on a CPU without native support (--force)
    native: bool                    # the device runs the precision natively (OpenVINO: OPTIMIZATION_CAPABILITIES)
    validated: str                  # when, ISO 8601 UTC
    file: Optional[str] = None      # int8: its model file in the bundle; bf16: none (model.onnx, the engine's hint)
    weights: Optional[str] = None   # an OpenVINO IR `file`'s weights (.bin), listed in files like it
    weights_sha256: Optional[str] = None
    skipped_records: int = 0
    speed: Optional[Speed] = None   # model-only images/s, float32 and the variant, same run
    source_sha256: Optional[str] = None        # int8: the model.onnx it was quantized from (a re-export voids it)
    calibration: Optional[Calibration] = None  # int8: what it was calibrated on

    def check(self):
        if self.precision not in PRECISIONS:
            return "precision must be one of %s, got %r" % (", ".join(PRECISIONS), self.precision)
        if self.precision == "bf16" and self.file is not None:
            return "a bf16 variant runs %s with the engine's hint and names no file, got %r" % (ONNX, self.file)
        if self.precision == "int8" and self.file is None:
            return "an int8 variant needs its model file"
        for name in (self.file, self.weights):
            if name is not None and os.path.basename(name) != name:
                return "file %r is not a file name in the bundle" % name
        if (self.weights is None) != (self.weights_sha256 is None) or (self.weights and not self.file):
            return "weights, weights_sha256 and file go together (an OpenVINO IR's .bin beside its .xml)"
        for name, value in (("float32.top1", self.float32.top1), ("float32.top5", self.float32.top5),
                            ("reduced.top1", self.reduced.top1), ("reduced.top5", self.reduced.top5),
                            ("top1_agreement", self.top1_agreement)):
            if not 0.0 <= value <= 1.0:
                return "%s must be a fraction in [0, 1], got %r" % (name, value)
        if self.precision == "int8" and (self.source_sha256 is None or self.calibration is None):
            return "an int8 variant needs source_sha256 (the model.onnx it was made from) and its calibration"
        if self.examples < 1 or self.max_top1_drop < 0:
            return "examples must be at least 1 and max_top1_drop not negative"
        return None

    @property
    def within_threshold(self):
        return self.top1_drop <= self.max_top1_drop


@dataclass
class ModelInfo:
    """model.json."""
    name: str
    version: str
    source: Source
    architecture: specs.Architecture
    input: TensorInfo
    output: TensorInfo
    preprocessing: Preprocessing
    labels: LabelInfo = field(default_factory=LabelInfo)
    files: Dict[str, FileInfo] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    created: Optional[str] = None
    exporter: Optional[str] = None
    frozen_graph: Optional[Dict[str, Any]] = None
    onnx: Optional[Dict[str, Any]] = None
    verification: Optional[Dict[str, Any]] = None
    om: Optional[OmInfo] = None
    notice: Optional[str] = None   # what a person must read before trusting the answers (the digits demo's)
    variants: Optional[List[PrecisionVariant]] = None   # validated reduced-precision variants (mbv3 quantize)

    @property
    def num_classes(self):
        return int(self.output.num_classes)

    def variant(self, precision, engine):
        """The recorded PrecisionVariant for (precision, engine) whose model is this bundle's, or None."""
        for v in self.variants or ():
            if v.precision == precision and v.engine == engine:
                model = self.files.get(v.file or ONNX)
                source = self.files.get(ONNX)
                weights = self.files.get(v.weights) if v.weights else None
                current = model is not None and model.sha256 == v.model_sha256 and (
                    v.source_sha256 is None or (source is not None and source.sha256 == v.source_sha256)) and (
                    v.weights is None or (weights is not None and weights.sha256 == v.weights_sha256))
                return v if current else None
        return None

    def model_file(self, precision, engine):
        """The bundle file `engine` runs for `precision`: model.onnx for f32 and for an engine hint
        (bf16), the variant's own file (int8); None when no current record for (precision, engine)."""
        if precision == "f32":
            return ONNX
        record = self.variant(precision, engine)
        return None if record is None else record.file or ONNX

    def record_variant(self, variant):
        """Add `variant`, replacing an earlier one of the same precision and engine."""
        kept = [v for v in self.variants or () if (v.precision, v.engine) != (variant.precision, variant.engine)]
        self.variants = kept + [variant]

    def to_dict(self):
        return to_plain(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data, where=METADATA):
        if not isinstance(data, dict):
            raise BundleError("%s: expected a JSON object, got %s" % (where, type(data).__name__))
        if data.get("format") != FORMAT:
            raise BundleError("%s is not an %s metadata file (format %r)" % (where, FORMAT, data.get("format")))
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError("%s: format_version %r is not %d, the one this mbv3 reads"
                              % (where, data.get("format_version"), FORMAT_VERSION))
        info = from_plain(cls, data, where)
        problem = info.check()
        if problem:
            raise BundleError("%s: %s" % (where, problem))
        return info

    def check(self):
        """The cross-field rules: None, or the first broken one."""
        shape = self.input.shape
        problem = self.preprocessing.check()
        if problem:
            return "preprocessing: " + problem
        if len(shape) != 4 or shape[3] != 3 or self.input.layout != "NHWC":
            return "input must be NHWC [N, H, W, 3], got %s %s" % (self.input.layout, shape)
        if [shape[1], shape[2]] != list(self.preprocessing.size):
            return "input shape %s does not match preprocessing.size %s" % (shape, self.preprocessing.size)
        if not self.output.num_classes or self.output.num_classes < 1:
            return "output.num_classes must be a positive integer, got %r" % self.output.num_classes
        if len(self.output.shape) != 2 or self.output.shape[1] != self.output.num_classes:
            return "output shape %s does not match num_classes %d" % (self.output.shape, self.output.num_classes)
        if self.architecture.num_classes not in (None, self.output.num_classes):
            return "architecture.num_classes %r does not match output.num_classes %d" % (
                self.architecture.num_classes, self.output.num_classes)
        if self.source.weights not in ("ema", "raw"):
            return "source.weights must be 'ema' or 'raw', got %r" % self.source.weights
        for i, v in enumerate(self.variants or ()):
            problem = v.check()
            if problem:
                return "variants[%d]: %s" % (i, problem)
            for name in (v.file, v.weights):
                if name is not None and name not in self.files:
                    return "variants[%d]: its file %s is not listed in files" % (i, name)
        return None


# --- plain JSON <-> records --------------------------------------------------------------------------

def to_plain(value):
    """A record (dataclass) as plain JSON values, its None fields left out: the writers of model.json
    and dataset.json (mbv3.data.metadata) go through it."""
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.default is None:
                continue  # optional and absent: not written, so older readers see the file they know
            out[f.name] = to_plain(item)
        return out
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def _args(tp):
    return getattr(tp, "__args__", ()) or ()


def from_plain(tp, value, where):
    """`value` (parsed JSON) as type `tp`, or BundleError naming the field path."""
    origin = getattr(tp, "__origin__", None)
    if origin is typing.Union:
        if value is None and type(None) in _args(tp):
            return None
        inner = [a for a in _args(tp) if a is not type(None)]
        return from_plain(inner[0], value, where)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BundleError("%s must be an object, got %s" % (where, _kind(value)))
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = from_plain(hints[f.name], value[f.name], "%s.%s" % (where, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BundleError("%s.%s is missing" % (where, f.name))
        return tp(**kwargs)
    if origin in (list, List):
        if not isinstance(value, list):
            raise BundleError("%s must be a list, got %s" % (where, _kind(value)))
        (item,) = _args(tp)
        return [from_plain(item, v, "%s[%d]" % (where, i)) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise BundleError("%s must be an object, got %s" % (where, _kind(value)))
        _, item = _args(tp)
        return {str(k): from_plain(item, v, "%s.%s" % (where, k)) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise BundleError("%s must be true or false, got %s" % (where, _kind(value)))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BundleError("%s must be an integer, got %s" % (where, _kind(value)))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BundleError("%s must be a number, got %s" % (where, _kind(value)))
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise BundleError("%s must be a string, got %s" % (where, _kind(value)))
        return str(value)
    raise TypeError("no JSON reader for %r" % (tp,))


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "%r" % (value,))


# --- files ----------------------------------------------------------------------------------------

def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_info(path):
    return FileInfo(sha256=sha256(path), bytes=os.path.getsize(path))


def imagenet_classes():
    """[(wnid, readable name)] for the 1000 ImageNet-1k classes in sorted-synset order."""
    with io.open(os.path.join(_RESOURCES, "imagenet_classes.tsv"), encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip()]


def default_labels(num_classes):
    """ImageNet's names for slim's 1001/1000-class heads, numbered placeholders otherwise."""
    if num_classes == 1001:
        return [BACKGROUND] + [name for _, name in imagenet_classes()]
    if num_classes == 1000:
        return [name for _, name in imagenet_classes()]
    return [BACKGROUND] + ["class_%d" % i for i in range(1, num_classes)]


def read_labels(path, num_classes):
    """Labels from a file of num_classes lines, or num_classes - 1 (background is then prepended)."""
    try:
        with io.open(path, encoding="utf-8") as f:
            labels = [line.rstrip("\r\n") for line in f if line.strip()]
    except (IOError, OSError, UnicodeDecodeError) as e:
        raise BundleError("cannot read labels file %s: %s" % (path, getattr(e, "strerror", None) or e))
    if len(labels) == num_classes - 1:
        labels = [BACKGROUND] + labels
    if len(labels) != num_classes:
        raise BundleError("labels file %s has %d labels; the model has %d classes (give %d, or %d without background)"
                          % (path, len(labels), num_classes, num_classes, num_classes - 1))
    return labels


def write_labels(path, labels):
    with io.open(path, "w", encoding="utf-8") as f:
        f.write(u"".join(label + u"\n" for label in labels))


def label_info(labels):
    has_background = bool(labels) and labels[0] == BACKGROUND
    return LabelInfo(file=LABELS, label_offset=1 if has_background else 0,
                     background_index=0 if has_background else None)


# --- the bundle -----------------------------------------------------------------------------------

@dataclass
class Bundle:
    path: str
    info: ModelInfo
    labels: list

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def name(self):
        return self.info.name

    @property
    def version(self):
        return self.info.version

    @property
    def num_classes(self):
        return self.info.num_classes

    @property
    def preprocessing(self):
        return self.info.preprocessing

    @property
    def metadata(self):
        """model.json as plain JSON (what /v1/model shows)."""
        return self.info.to_dict()

    @property
    def background_index(self):
        return self.info.labels.background_index

    def save_info(self):
        """Rewrite model.json from self.info (atomically)."""
        from . import fileio
        fileio.write_text(self.file(METADATA), self.info.to_json())


def read_info(path):
    meta_path = os.path.join(path, METADATA)
    try:
        if os.path.getsize(meta_path) > MAX_METADATA_BYTES:
            raise BundleError("%s: %s is over %d bytes; not a model bundle's metadata"
                              % (path, METADATA, MAX_METADATA_BYTES))
        with io.open(meta_path, encoding="utf-8") as f:
            data = json.load(f)
    except (IOError, OSError) as e:
        raise BundleError("%s is not a model bundle: cannot read %s (%s)" % (path, METADATA, e.strerror or e))
    except (ValueError, RecursionError) as e:
        raise BundleError("%s: %s is not valid JSON (%s)" % (path, METADATA, e))
    return ModelInfo.from_dict(data, os.path.join(path, METADATA))


def check_files(path, info, required=(ONNX, LABELS)):
    """Every file model.json lists exists with its recorded size and sha256; `required` are listed."""
    for name in required:
        if name not in info.files:
            raise BundleError("bundle %s: %s does not list %s" % (path, METADATA, name))
    for name, recorded in sorted(info.files.items()):
        fpath = os.path.join(path, name)
        if os.path.basename(name) != name:
            raise BundleError("bundle %s: %s lists %r, which is not a file name in the bundle" % (path, METADATA, name))
        if not os.path.isfile(fpath):
            raise BundleError("bundle %s: %s is missing" % (path, name))
        if os.path.getsize(fpath) != recorded.bytes or sha256(fpath) != recorded.sha256:
            raise BundleError("bundle %s: %s does not match the sha256 recorded in %s (changed or damaged; "
                              "export the bundle again)" % (path, name, METADATA))


def load(path, verify=False):
    """Read a bundle's model.json (typed, checked) and labels; with verify, also every file's sha256."""
    path = str(path)
    if not os.path.isdir(path):
        raise BundleError("no model bundle at %s (not a directory)" % path)
    info = read_info(path)
    if verify:
        check_files(path, info)
    labels = read_labels(os.path.join(path, info.labels.file), info.num_classes)
    return Bundle(os.path.abspath(path), info, labels)
