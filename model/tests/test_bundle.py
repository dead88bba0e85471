"""model.json's one typed definition: every field checked on read, the preprocessing record's
arithmetic (normalize, its inverse, the AIPP values) derived from one place."""
import copy
import io
import json
import os

import numpy as np
import pytest

from mbv3 import bundle, specs
from mbv3.errors import BundleError


def _info(**prep):
    return bundle.ModelInfo(
        name="m", version="3", source=bundle.Source(checkpoint="/runs/x/model.ckpt-3", step=3, weights="ema"),
        architecture=specs.Architecture(variant="small", multiplier=0.75),
        input=bundle.TensorInfo(name="input", shape=[-1, 64, 48, 3], layout="NHWC", range=[-1.0, 1.0]),
        output=bundle.TensorInfo(name="logits", shape=[-1, 11], kind="logits", num_classes=11),
        preprocessing=bundle.Preprocessing(size=[64, 48], **prep),
        files={"model.onnx": bundle.FileInfo(sha256="0" * 64, bytes=10)})


def test_round_trip_through_plain_json():
    info = _info(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    plain = info.to_dict()
    assert "om" not in plain and plain["format"] == "mbv3-bundle" and plain["preprocessing"]["size"] == [64, 48]
    assert bundle.ModelInfo.from_dict(copy.deepcopy(plain)) == info


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("source"), "model.json.source is missing"),
    (lambda d: d["output"].update(num_classes="11"), "model.json.output.num_classes must be an integer"),
    (lambda d: d["output"].update(num_classes=12), "output shape [-1, 11] does not match num_classes 12"),
    (lambda d: d["architecture"].update(num_classes=7), "architecture.num_classes 7 does not match output.num_classes 11"),
    (lambda d: d["preprocessing"].update(size=[64]), "size must be [height, width]"),
    (lambda d: d["preprocessing"].update(size=[32, 32]), "does not match preprocessing.size"),
    (lambda d: d["preprocessing"].update(std=[0.5, 0, 0.5]), "std > 0"),
    (lambda d: d["preprocessing"].update(crop_fraction=1.5), "crop_fraction must be in (0, 1]"),
    (lambda d: d["files"].update({"model.onnx": {"sha256": "x"}}), "model.json.files.model.onnx.bytes is missing"),
    (lambda d: d.update(om={"aipp": "yes"}), "model.json.om.aipp must be true or false"),
    (lambda d: d.update(format_version=2), "format_version 2"),
    (lambda d: d.update(format="other"), "not an mbv3-bundle metadata file"),
])
def test_every_field_is_checked(change, message):
    plain = _info().to_dict()
    change(plain)
    with pytest.raises(BundleError) as err:
        bundle.ModelInfo.from_dict(plain)
    assert message in str(err.value)


def test_normalize_denormalize_and_aipp_agree():
    prep = bundle.Preprocessing(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    pixels = np.arange(256, dtype=np.uint8).reshape(-1, 1).repeat(3, axis=1)
    values = prep.normalize(pixels)
    np.testing.assert_array_equal(prep.denormalize(values), pixels)
    aipp = np.array([[(p - m) * r for (m, r) in prep.aipp_channels()] for p in range(256)], np.float32)
    np.testing.assert_allclose(aipp, values, atol=1e-5)
    default = bundle.Preprocessing()
    assert default.aipp_channels() == [(127.5, 1 / 127.5)] * 3
    np.testing.assert_allclose(default.normalize(np.array([0, 255])[:, None].repeat(3, 1)), [[-1] * 3, [1] * 3])


GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "model-json-at-format-1.json")


def test_a_model_json_written_by_an_earlier_export_reads_and_writes_back_byte_for_byte():
    """model.json is read by deployed services: a refactor of the records must not change a byte."""
    with io.open(GOLDEN, encoding="utf-8") as f:
        text = f.read()
    info = bundle.ModelInfo.from_dict(json.loads(text))
    assert (info.architecture.variant, info.architecture.multiplier, info.architecture.family) == \
        ("small", 0.35, "MobileNetV3")
    assert info.om.aipp is True and info.num_classes == 5
    assert info.to_json() == text
