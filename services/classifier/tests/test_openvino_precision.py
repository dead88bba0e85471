"""PRECISION=bf16 with BACKEND=openvino: bfloat16 runs only when the bundle records it as validated and
the CPU has it natively; f32 is today's float32; bf16 demands both or stops start-up in one line. The
choice (backends.choose_precision, made at planning) is made from the bundle's record and
OPTIMIZATION_CAPABILITIES, both injected here, so the branch of a CPU without BF16 runs on any
machine; the compiled model's own reading of the hint says what actually runs. int8 and the ranking
of several variants: test_backend_plan.py and test_int8_serving.py."""
import shutil

import numpy as np
import pytest
import requests

from classifier import backends
from classifier import settings as settings_mod
from classifier.backends.base import BackendError
from classifier.backends import choose_precision
from mbv3 import bundle as bundle_mod
from mbv3 import precision as variants

from svc_support import SIZE, Server, bundle_dir  # noqa: F401

WITH_BF16 = ["BF16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]   # this machine's AMD EPYC
WITHOUT_BF16 = ["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]        # e.g. an AVX2-only CPU


def _record(info, **changes):
    """A bf16 record as `mbv3 quantize` writes it, for info's model.onnx. Its figures are made up: the
    command that measures them is tested in model/tests/test_precision.py."""
    fields = dict(precision="bf16", engine="openvino", engine_version="2026.4.1", device="CPU",
                  device_name="a CPU", model_sha256=info.files[bundle_mod.ONNX].sha256, data="/data",
                  split="validation", examples=500, float32=bundle_mod.Accuracy(0.91, 0.99),
                  reduced=bundle_mod.Accuracy(0.908, 0.99), top1_agreement=0.996, max_top1_drop=0.5,
                  top1_drop=0.2, forced=False, native=True, validated="2026-12-07T17:00:00Z")
    fields.update(changes)
    return bundle_mod.PrecisionVariant(**fields)


@pytest.fixture(scope="module")
def bundles(bundle_dir, tmp_path_factory):  # noqa: F811
    """(without, with): the service's test bundle as exported, and a copy that records bf16."""
    recorded = tmp_path_factory.mktemp("bf16") / "bundle"
    shutil.copytree(str(bundle_dir), str(recorded))
    loaded = bundle_mod.load(str(recorded))
    loaded.info.record_variant(_record(loaded.info))
    loaded.save_info()
    return bundle_mod.load(str(bundle_dir), verify=True), bundle_mod.load(str(recorded), verify=True)


# --- the choice, without OpenVINO -----------------------------------------------------------------

@pytest.mark.parametrize("recorded,caps,setting,hint", [
    (True, WITH_BF16, "auto", "bf16"), (True, WITH_BF16, "f32", "f32"), (True, WITH_BF16, "bf16", "bf16"),
    (False, WITH_BF16, "auto", "f32"), (False, WITH_BF16, "f32", "f32"), (False, WITH_BF16, "bf16", None),
    (True, WITHOUT_BF16, "auto", "f32"), (True, WITHOUT_BF16, "f32", "f32"), (True, WITHOUT_BF16, "bf16", None),
    (False, WITHOUT_BF16, "auto", "f32"), (False, WITHOUT_BF16, "bf16", None),
])
def test_the_choice(bundles, recorded, caps, setting, hint):
    info = bundles[1 if recorded else 0].info
    if hint is None:
        with pytest.raises(BackendError) as e:
            choose_precision(setting, "openvino", info, caps)
        assert str(e.value).startswith("PRECISION=bf16 cannot run on openvino: ")
        assert ("records no bf16" in str(e.value)) == (not recorded)
        assert ("no native bf16" in str(e.value)) == ("BF16" not in caps)
        assert "\n" not in str(e.value)
        return
    chosen = choose_precision(setting, "openvino", info, caps)
    why = chosen.why
    assert chosen.name == hint and chosen.file == bundle_mod.ONNX and why.startswith("PRECISION=%s" % setting)
    assert (chosen.variant is not None) == (hint == "bf16")
    if hint == "bf16":
        assert "500 validation images" in why and "agreement 0.9960" in why and "the CPU has BF16" in why
        assert "speed not recorded" in why
    elif setting == "auto":
        assert ("records no bf16" in why) == (not recorded) and ("no native bf16" in why) == ("BF16" not in caps)


def test_a_record_for_another_model_or_precision_does_not_count(bundles):
    info = bundles[1].info
    stale = bundle_mod.ModelInfo.from_dict(info.to_dict())
    stale.variants = [_record(info, model_sha256="0" * 64)]        # measured on an earlier model.onnx
    chosen = choose_precision("auto", "openvino", stale, WITH_BF16)
    assert chosen.name == "f32" and "measured on other model files" in chosen.why
    forced = bundle_mod.ModelInfo.from_dict(info.to_dict())
    forced.variants = [_record(info, forced=True, top1_drop=2.0)]
    chosen = choose_precision("auto", "openvino", forced, WITH_BF16)
    assert chosen.name == "bf16" and "recorded with --force" in chosen.why and "2.00 points down" in chosen.why


def test_the_setting_is_checked_at_start_up():
    assert settings_mod.load(environ={}, dotenv=None).PRECISION == "auto" == backends.PRECISIONS[0]
    assert settings_mod.load(environ={"PRECISION": "bf16"}, dotenv=None).PRECISION == "bf16"
    with pytest.raises(settings_mod.SettingsError, match=r"PRECISION='fp16': choose one of auto, f32, bf16, int8"):
        settings_mod.load(environ={"PRECISION": "fp16"}, dotenv=None)


# --- OpenVINO on this CPU -------------------------------------------------------------------------

def _backend(loaded, setting, caps):
    chosen = choose_precision(setting, "openvino", loaded.info, caps)
    return backends.create(loaded, backend="openvino", threads=1, max_batch=4, precision=chosen)


@pytest.mark.parametrize("recorded", [False, True])
@pytest.mark.parametrize("setting", ["auto", "f32", "bf16"])
def test_the_backend_runs_what_it_says(bundles, recorded, setting):
    caps = backends.System.capabilities()
    if variants.NATIVE["bf16"] not in caps:
        pytest.skip("this CPU has no native bf16")
    loaded = bundles[1 if recorded else 0]
    if setting == "bf16" and not recorded:
        with pytest.raises(BackendError, match="PRECISION=bf16 cannot run on openvino: the bundle records no bf16"):
            _backend(loaded, setting, caps)
        return
    backend = _backend(loaded, setting, caps)
    expected = "bf16" if recorded and setting != "f32" else "f32"
    assert backend.precision == expected == backend.inference_precision   # the compiled model's own reading
    assert ", %s: model.onnx, inference precision %s)" % (expected, expected) in backend.describe()
    batch = np.random.default_rng(0).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    out = backend.run(batch)
    assert out.shape == (3, loaded.num_classes) and out.dtype == np.float32 and np.isfinite(out).all()
    backend.close()


def test_a_cpu_without_bf16_runs_f32(bundles):
    backend = _backend(bundles[1], "auto", WITHOUT_BF16)
    assert backend.precision == "f32" == backend.inference_precision
    backend.close()


def test_onnx_runtime_refuses_bf16_at_planning(bundles):
    with pytest.raises(BackendError, match=r"PRECISION=bf16 cannot run on onnxruntime: ONNX Runtime does not run "
                                           r"bf16 \(BACKEND=openvino does\)"):
        choose_precision("bf16", "onnxruntime", bundles[1].info, WITH_BF16)
    assert choose_precision("auto", "onnxruntime", bundles[1].info, WITH_BF16).name == "f32"


# --- the service ----------------------------------------------------------------------------------

def test_v1_model_and_the_log_say_which_precision_runs_and_why(bundles):
    import openvino as ov
    if variants.NATIVE["bf16"] not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no native bf16")
    with Server(bundles[1].path, BACKEND="openvino", PRECISION="auto") as s:
        body = requests.get(s.url + "/v1/model", timeout=10).json()
        serving = body["serving"]
        (shown,) = body["variants"]   # the record itself, its data set's path cut to its name as every path there
        assert shown["precision"] == "bf16" and shown["top1_agreement"] == 0.996 and shown["data"] == "data"
        assert (serving["precision"], serving["model_file"]) == ("bf16", "model.onnx"), serving
        assert ", bf16: model.onnx, inference precision bf16)" in serving["backend"], serving
        assert serving["precision_reason"].startswith("PRECISION=auto: bf16 (model.onnx) validated on 500 validation")
        assert serving["variant"]["top1_agreement"] == 0.996 and serving["variant"]["speed"] is None
        s.stop()
        assert "precision: bf16, model.onnx (PRECISION=auto: bf16 (model.onnx) validated" in s.stderr()


def test_precision_bf16_without_a_record_stops_start_up(bundles):
    server = Server(bundles[0].path, BACKEND="openvino", PRECISION="bf16")
    try:
        server.proc.wait(timeout=120)
    finally:
        code, err = server.stop()
    assert code == 2   # decided at planning, before a model loads
    lines = [line for line in err.splitlines() if "PRECISION=bf16" in line]
    assert len(lines) == 1 and "cannot run on openvino: the bundle records no bf16" in lines[0], err[-3000:]
