"""INT8 calibration for `mbv3 quantize`: the images an int8 model's activation ranges are measured on
(a TFRecord split of the run's data, or an image folder), preprocessed exactly as the server does,
and NNCF's post-training quantization of model.onnx on them. Bounded like every input: at most
MAX_CALIBRATION images held, files and decoded pixels capped, unusable files counted and skipped.
"""
import contextlib
import os
import random
import sys
import time

import numpy as np

from . import bundle_eval, data, fast_preprocess
from .console import format_duration, say
from .errors import ImageError, MbV3Error, first_line

DEFAULT_CALIBRATION_SIZE = 300           # NNCF's own default subset size
MIN_CALIBRATION = 32                     # fewer images give activation ranges of one or two classes
MAX_CALIBRATION = 2000                   # held in memory as model inputs (2000 at 224x224: 1.2 GB)
DEFAULT_CALIBRATION_SPLIT = "train"
MAX_CALIBRATION_FILE_BYTES = 64 << 20    # an image-folder file larger than this is skipped, not read
MAX_CALIBRATION_PIXELS = 64 << 20


class CalibrationSource(object):
    """Where calibration images come from: a TFRecord data set's split, or an image folder's files."""

    def __init__(self, path, split=None, record=None, files=None):
        self.path, self.split, self.record, self.files = os.path.abspath(path), split, record, files

    def describe(self):
        if self.split:
            return "split %s of %s" % (self.split, self.path)
        return "image folder %s (%d image files)" % (self.path, len(self.files))


def list_images(folder, limit=100000):
    """Image files under `folder` (any depth; hidden entries and symbolic-link loops are not walked),
    sorted, at most `limit` of them."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(data.IMAGE_EXTENSIONS):
                found.append(os.path.join(root, name))
                if len(found) >= limit:
                    return found
    return found


def _progress(what, done, total, start, log):
    rate = done / max(time.time() - start, 1e-9)
    log("%s: %d/%d images (%.1f%%), %.1f img/s, ETA %s" % (
        what, done, total, 100.0 * done / max(total, 1), rate,
        format_duration((total - done) / rate) if rate > 0 else "?"))


def _read_image_file(path, prep):
    """The model input of one calibration file, or None when it cannot be used (too large, unreadable,
    not an image): the serving path's decode and transform."""
    try:
        if os.path.getsize(path) > MAX_CALIBRATION_FILE_BYTES:
            return None
        with open(path, "rb") as f:
            encoded = f.read()
        return fast_preprocess.reference_input(encoded, prep, max_pixels=MAX_CALIBRATION_PIXELS)
    except (OSError, ImageError, ValueError):
        return None


def calibration_inputs(source, prep, size, batch_size, workers, progress_seconds, log=say):
    """Up to `size` model inputs from the calibration source, preprocessed as the server does; returns
    (inputs, unusable count). An image folder is read in a shuffled (seeded) order, so a folder of class
    folders gives every class its share; a TFRecord split is already shuffled by `mbv3 data build`."""
    import concurrent.futures
    inputs, skipped = [], 0
    start = last = time.time()
    if source.split:
        records = bundle_eval.prepared_batches(data.shard_files(source.path, source.record), prep, batch_size,
                                               workers, log)
        batches = ([None if p is None else p[0] for p in prepared] for prepared in records)
    else:
        order = list(source.files)
        random.Random(0).shuffle(order)
        pool = concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1)
        batches = (list(pool.map(lambda path: _read_image_file(path, prep), order[i:i + batch_size]))
                   for i in range(0, len(order), batch_size))
    try:
        for prepared in batches:
            for image in prepared:
                if image is None:
                    skipped += 1
                elif len(inputs) < size:
                    inputs.append(image)
            if len(inputs) >= size:
                break
            now = time.time()
            if now - last >= progress_seconds:
                last = now
                _progress("calibration", len(inputs), size, start, log)
    finally:
        batches.close()
        if source.split:
            records.close()   # stops the reader's thread pool now, not when collected
        else:
            pool.shutdown()
    if len(inputs) < MIN_CALIBRATION:
        raise MbV3Error("only %d usable calibration images in %s (%d could not be decoded); at least %d are needed"
                        % (len(inputs), source.describe(), skipped, MIN_CALIBRATION))
    if len(inputs) < size:
        log("warning: %d usable calibration images in %s, fewer than --calibration-size %d; calibrating on those"
            % (len(inputs), source.describe(), size))
    log("calibration: %d images read in %s (%d could not be used)"
        % (len(inputs), format_duration(time.time() - start), skipped))
    return inputs, skipped


def _quantize(model_path, backend, load, inputs, input_name, log):
    """NNCF's post-training quantization, on its `backend` ("onnx" or "openvino"), of the model
    `load(model_path)` makes (NNCF picks its backend by the model's type), calibrated on `inputs` (each
    one image), default preset, full bias correction; returns (quantized model, what was done, in
    words). NNCF's progress bars go to stderr: stdout carries the command's result."""
    try:
        import nncf
    except ImportError as e:
        raise MbV3Error("--precision int8 needs NNCF (nncf==3.4.0, in requirements/cpu.txt): %s" % e)
    method = "nncf %s post-training quantization (%s backend, default preset, bias correction)" % (
        nncf.__version__, backend)
    log("quantizing %s: %s, on %d calibration images" % (model_path, method, len(inputs)))
    try:
        dataset = nncf.Dataset(inputs, lambda image: {input_name: np.ascontiguousarray(image[np.newaxis], np.float32)})
        with contextlib.redirect_stdout(sys.stderr):
            return nncf.quantize(load(model_path), dataset, subset_size=len(inputs), fast_bias_correction=False), method
    except MbV3Error:
        raise
    except Exception as e:   # NNCF, onnx and OpenVINO raise many types for a model they cannot handle
        raise MbV3Error("NNCF cannot quantize %s (%s backend): %s" % (model_path, backend, first_line(e)))


def quantize_onnx(model_path, inputs, input_name, log=say):
    """model.onnx quantized by NNCF's post-training quantization on its ONNX backend (default preset,
    full bias correction: on three digits-cpu runs it lost 0.00/0.00/-0.28 points of top-1 where the
    fast one lost 0.00/0.56/0.28, docs/benchmarks.md), calibrated on `inputs` (each one image);
    returns (serialized QDQ model, what was done, in words). ONNX Runtime runs it."""
    import onnx
    quantized, method = _quantize(model_path, "onnx", onnx.load, inputs, input_name, log)
    return quantized.SerializeToString(), method


def quantize_openvino(model_path, inputs, input_name, xml_path, log=say):
    """model.onnx converted to OpenVINO's own graph (openvino.convert_model) and quantized there by
    NNCF's OpenVINO backend, the same settings and images as quantize_onnx; written as an OpenVINO IR
    (xml_path and the .bin beside it). NNCF places its quantizers where the CPU plugin fuses them into
    the int8 convolutions: the same model quantized as ONNX QDQ ran 1.6x float32 at batch 8 in
    OpenVINO, this one 2.3x (docs/benchmarks.md). Returns what was done, in words."""
    try:
        import openvino as ov
    except ImportError as e:
        raise MbV3Error("an int8 model for OpenVINO needs the openvino package (%s)" % e)
    quantized, method = _quantize(model_path, "openvino", ov.convert_model, inputs, input_name, log)
    try:
        ov.save_model(quantized, xml_path, compress_to_fp16=False)
    except Exception as e:   # OpenVINO raises RuntimeError and its own subclasses
        raise MbV3Error("cannot write %s: %s" % (xml_path, first_line(e)))
    return method
