"""backends.plan(): every combination of BACKEND, DEVICE_IDS, installed packages, answering devices
and PRECISION, resolved once into one concrete backend with its workers, threads, batch and the
precision it runs. No backend is loaded: the machine is a FakeSystem, the bundle a ModelInfo."""
import pytest

from classifier import backends
from classifier.backends import BackendError, plan
from mbv3 import bundle as bundle_mod
from mbv3 import precision as variants
from mbv3 import specs
from svc_support import bundle_dir, variant_record  # noqa: F401  (fixture)

BOTH = ("BF16", "FP32", "INT8")   # OPTIMIZATION_CAPABILITIES of a CPU with AVX512_BF16 and VNNI


def fake_info(*records):
    """A model.json with model.onnx and model-int8.onnx listed (no files behind it: plan reads no file)
    recording `records`, each (precision, engine, speed or None, {changes})."""
    info = bundle_mod.ModelInfo(
        name="t", version="1", source=bundle_mod.Source("ckpt"), architecture=specs.Architecture("small", 0.5),
        input=bundle_mod.TensorInfo("input", [-1, 96, 96, 3], layout="NHWC"),
        output=bundle_mod.TensorInfo("logits", [-1, 11], num_classes=11),
        preprocessing=bundle_mod.Preprocessing(size=[96, 96]),
        files={bundle_mod.ONNX: bundle_mod.FileInfo("a" * 64, 10), variants.INT8_FILE: bundle_mod.FileInfo("b" * 64, 5)})
    for precision, engine, speed, changes in records:
        info.record_variant(variant_record(info, precision, engine, speed, **changes))
    assert info.check() is None
    return info


class FakeSystem:
    def __init__(self, installed=("openvino", "onnxruntime"), devices=0, answering=None, count_error=None,
                 capabilities=BOTH):
        """devices: how many pyACL counts; answering: the ids that open (default: all counted);
        capabilities: OpenVINO's OPTIMIZATION_CAPABILITIES for the CPU."""
        self.packages = set(installed)
        self.caps, self.asked = tuple(capabilities), 0
        self.devices, self.count_error = devices, count_error
        self.answering = set(range(devices)) if answering is None else set(answering)
        self.probed = []

    def installed(self, package):
        return package in self.packages

    def count_devices(self):
        if self.count_error:
            raise BackendError(self.count_error)
        return self.devices

    def visibility(self):
        return list(range(self.devices)), "%d chip(s) mounted" % self.devices

    def capabilities(self):
        self.asked += 1
        return self.caps

    def probe(self, device):
        self.probed.append(device)
        return (True, "") if device in self.answering else (False, "no Ascend device %d" % device)


def make(backend="auto", device_ids=(0,), cpu_workers=1, threads=0, max_batch=8, cpus=4, info=None, precision="auto",
         **system):
    return plan(backend=backend, device_ids=device_ids, cpu_workers=cpu_workers, threads=threads,
                max_batch=max_batch, cpus=cpus, info=info or fake_info(), precision=precision,
                system=system.pop("system", None) or FakeSystem(**system))


@pytest.mark.parametrize("installed,expected,why", [
    (("openvino", "onnxruntime"), "openvino", "BACKEND=auto: using openvino (pyACL not installed)"),
    (("onnxruntime",), "onnxruntime", "BACKEND=auto: using onnxruntime (pyACL not installed; openvino not installed)"),
    ((), "onnxruntime", "BACKEND=auto: using onnxruntime (pyACL not installed; openvino not installed; "
                        "onnxruntime not installed)"),
])
def test_auto_without_pyacl_takes_the_first_installed_cpu_backend(installed, expected, why):
    p = make(installed=installed)
    assert (p.backend, p.devices, p.cpu_workers, p.why) == (expected, (), 1, why)
    assert not p.on_devices


def test_auto_with_pyacl_and_answering_devices_serves_on_every_listed_device():
    system = FakeSystem(installed=("acl", "openvino"), devices=4)
    p = make(backend="auto", device_ids=(1, 3), cpu_workers=2, threads=0, max_batch=4, cpus=4, system=system)
    assert (p.backend, p.devices, p.cpu_workers, p.threads, p.max_batch) == ("acl", (1, 3), 0, 0, 4)
    assert system.probed == [1, 3]
    assert p.why == "BACKEND=auto: using acl on device(s) 1,3; chips in the container: 4 chip(s) mounted"


def test_auto_with_pyacl_but_no_device_falls_back_to_the_cpu_saying_why():
    p = make(installed=("acl", "openvino"), devices=0, device_ids=(0,))
    assert p.backend == "openvino" and p.why == "BACKEND=auto: using openvino (device 0: no Ascend device 0)"
    p = make(installed=("acl", "onnxruntime"), devices=0, device_ids="all")
    assert p.backend == "onnxruntime" and "DEVICE_IDS=all: pyACL sees no Ascend device" in p.why
    p = make(installed=("acl", "openvino"), device_ids="all", count_error="acl.init failed")
    assert p.backend == "openvino" and "pyACL cannot count the devices: acl.init failed" in p.why


def test_auto_refuses_a_mix_of_answering_and_silent_devices():
    with pytest.raises(BackendError, match=r"some devices answer and some do not \(device 5: no Ascend device 5\)"):
        make(installed=("acl", "openvino"), devices=4, device_ids=(0, 5))


def test_acl_counts_all_and_never_falls_back():
    system = FakeSystem(installed=("acl",), devices=3)
    p = make(backend="acl", device_ids="all", cpu_workers=1, threads=2, max_batch=8, cpus=4, system=system)
    assert (p.backend, p.devices, p.why) == ("acl", (0, 1, 2), "using acl on device(s) 0,1,2; chips in the "
                                                                 "container: 3 chip(s) mounted")
    assert system.probed == []   # BACKEND=acl: each worker's load reports its own device's failure
    with pytest.raises(BackendError, match="DEVICE_IDS=all: pyACL sees no Ascend device: 0 chip\\(s\\) mounted"):
        make(backend="acl", device_ids="all", installed=())
    with pytest.raises(BackendError, match="pyACL cannot count the devices: pyACL not importable"):
        make(backend="acl", device_ids="all", count_error="pyACL not importable (No module named 'acl')")
    assert make(backend="acl", device_ids=(7,), installed=()).devices == (7,)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_an_explicit_cpu_backend_ignores_pyacl_and_devices(backend):
    p = make(backend=backend, installed=("acl",), devices=4, device_ids="all")
    assert (p.backend, p.devices, p.why) == (backend, (), "")


@pytest.mark.parametrize("cpu_workers,threads,cpus,expected", [
    (1, 0, 4, 4),      # one worker takes every CPU
    (2, 0, 4, 2),      # the CPUs split between the workers
    (3, 0, 4, 1),
    (8, 0, 2, 1),      # never below one
    (2, 3, 4, 3),      # THREADS given: each worker's, whatever the CPUs
])
def test_cpu_threads_split_the_cpus_between_workers(cpu_workers, threads, cpus, expected):
    p = make(backend="onnxruntime", cpu_workers=cpu_workers, threads=threads, cpus=cpus)
    assert (p.cpu_workers, p.threads) == (cpu_workers, expected)


@pytest.mark.parametrize("cpus,workers", [(1, 1), (2, 2), (4, 4), (16, backends.MAX_AUTO_CPU_WORKERS)])
def test_cpu_workers_0_is_one_worker_per_cpu_capped(cpus, workers):
    """CPU_WORKERS=0 (the default): one one-thread worker per CPU up to the cap, and a lone image gets
    every CPU whatever the workers' share."""
    p = make(backend="openvino", cpu_workers=0, threads=0, cpus=cpus)
    assert (p.cpu_workers, p.threads, p.alone_threads) == (workers, max(1, cpus // workers), cpus)


@pytest.mark.parametrize("cpu_workers,threads,cpus,alone", [
    (1, 0, 4, 4),      # one worker: its batches and a lone image alike
    (2, 0, 4, 4),      # two of two threads each: a lone image runs on all four
    (2, 3, 4, 3),      # THREADS given: every run's, a lone image's too
])
def test_a_lone_image_gets_every_cpu_unless_threads_says(cpu_workers, threads, cpus, alone):
    p = make(backend="onnxruntime", cpu_workers=cpu_workers, threads=threads, cpus=cpus)
    assert p.alone_threads == alone


def test_create_takes_only_a_planned_backend(bundle_dir):  # noqa: F811
    from mbv3 import bundle
    with pytest.raises(BackendError, match="plan\\(\\) resolves auto first"):
        backends.create(bundle.load(bundle_dir), backend="auto")


def test_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        make(backend="cuda")


# --- PRECISION --------------------------------------------------------------------------------------

BF16_FAST, INT8_FAST = (100.0, 280.0), (100.0, 205.0)   # recorded images/s: float32, variant


@pytest.mark.parametrize("bf16,int8,expected", [
    (BF16_FAST, INT8_FAST, "bf16"),            # the higher recorded ratio wins
    ((100.0, 150.0), INT8_FAST, "int8"),
    (None, INT8_FAST, "int8"),                 # a measured gain beats a record without speed
    (None, None, "bf16"),                      # both unmeasured: PRECISIONS' order
    ((100.0, 90.0), None, "int8"),             # a slower record never runs under auto; an unmeasured one does
    ((100.0, 90.0), (100.0, 100.0), "f32"),    # no gain at all: float32
])
def test_auto_on_openvino_picks_the_fastest_usable_variant(bf16, int8, expected):
    info = fake_info(("bf16", "openvino", bf16, {}), ("int8", "openvino", int8, {}))
    system = FakeSystem()
    p = make(backend="openvino", info=info, system=system)
    chosen = p.precision
    assert chosen.name == expected and system.asked == 1
    assert chosen.file == {"int8": variants.INT8_FILE}.get(expected, bundle_mod.ONNX)
    if expected == "f32":
        assert chosen.variant is None and chosen.why == (
            "PRECISION=auto: f32, as bf16: recorded at 0.90x float32's images/s, no faster; "
            "int8: recorded at 1.00x float32's images/s, no faster")
        return
    assert chosen.variant is info.variant(expected, "openvino")
    assert chosen.why.startswith("PRECISION=auto: %s (%s) validated on 500 validation images with OpenVINO 1.0" % (
        expected, chosen.file))
    ratio = {"bf16": bf16, "int8": int8}[expected]
    assert ("%.2fx float32's images/s" % (ratio[1] / ratio[0]) if ratio else "speed not recorded") in chosen.why
    assert chosen.why.endswith("the CPU has %s" % variants.NATIVE[expected])
    summary = chosen.summary()
    assert summary["precision"] == expected and summary["top1_agreement"] == 0.99
    assert (summary["speed"]["ratio"] if ratio else None) == (round(ratio[1] / ratio[0], 4) if ratio else None)


def test_auto_without_a_record_runs_f32_and_says_why():
    p = make(backend="openvino", precision="auto")
    assert (p.precision.name, p.precision.file, p.precision.variant) == ("f32", bundle_mod.ONNX, None)
    assert p.precision.why == ("PRECISION=auto: f32, as bf16: the bundle records no bf16 variant validated on openvino "
                               "for its current files (mbv3 quantize --precision bf16); int8: the bundle records no "
                               "int8 variant validated on openvino for its current files (mbv3 quantize --precision "
                               "int8)")


def test_a_stale_record_runs_f32_with_the_reason():
    # int8 quantized from an earlier model.onnx; bf16 measured on an earlier model.onnx
    info = fake_info(("int8", "onnxruntime", INT8_FAST, {"source_sha256": "c" * 64}),
                     ("bf16", "openvino", BF16_FAST, {"model_sha256": "d" * 64}))
    for backend, name in (("onnxruntime", "int8"), ("openvino", "bf16")):
        chosen = make(backend=backend, info=info).precision
        assert chosen.name == "f32", chosen
        assert "the bundle's %s record for %s was measured on other model files" % (name, backend) in chosen.why
        with pytest.raises(BackendError, match="PRECISION=%s cannot run on %s: the bundle's %s record for %s was "
                                               "measured on other model files" % (name, backend, name, backend)):
            make(backend=backend, info=info, precision=name)


def test_int8_on_onnxruntime_runs_its_own_record_and_never_asks_openvino():
    info = fake_info(("int8", "onnxruntime", INT8_FAST, {}), ("bf16", "openvino", BF16_FAST, {}))
    for setting in ("auto", "int8"):
        system = FakeSystem(capabilities=())
        chosen = make(backend="onnxruntime", info=info, precision=setting, system=system).precision
        assert (chosen.name, chosen.file, system.asked) == ("int8", variants.INT8_FILE, 0)
        assert chosen.variant.engine == "onnxruntime" and "with ONNX Runtime 1.0" in chosen.why
        assert "the CPU has" not in chosen.why   # ONNX Runtime runs a QDQ model on any CPU


def test_explicit_int8_on_onnxruntime_without_its_record_is_an_error():
    info = fake_info(("int8", "openvino", INT8_FAST, {}))
    with pytest.raises(BackendError) as e:
        make(backend="onnxruntime", info=info, precision="int8")
    assert str(e.value) == ("PRECISION=int8 cannot run on onnxruntime: the bundle records no int8 variant validated on "
                            "onnxruntime for its current files (mbv3 quantize --precision int8); it records one for "
                            "openvino: set BACKEND=openvino")
    # BACKEND=auto keeps its CPU choice (openvino): a record only for onnxruntime does not move it
    info = fake_info(("int8", "onnxruntime", INT8_FAST, {}))
    with pytest.raises(BackendError, match="cannot run on openvino: .* it records one for onnxruntime: set "
                                           "BACKEND=onnxruntime"):
        make(backend="auto", info=info, precision="int8")
    assert make(backend="auto", info=info).precision.name == "f32"


def test_bf16_on_onnxruntime_is_an_error():
    info = fake_info(("bf16", "openvino", BF16_FAST, {}))
    with pytest.raises(BackendError, match=r"^PRECISION=bf16 cannot run on onnxruntime: ONNX Runtime does not run "
                                           r"bf16 \(BACKEND=openvino does\)$"):
        make(backend="onnxruntime", info=info, precision="bf16")


def test_openvino_needs_the_cpu_to_run_it_natively():
    info = fake_info(("bf16", "openvino", BF16_FAST, {}), ("int8", "openvino", INT8_FAST, {}))
    assert make(backend="openvino", info=info, capabilities=("FP32", "INT8")).precision.name == "int8"
    chosen = make(backend="openvino", info=info, capabilities=("FP32",)).precision
    assert chosen.name == "f32" and "int8: the CPU has no native int8 (OpenVINO's OPTIMIZATION_CAPABILITIES: " \
                                    "FP32)" in chosen.why
    with pytest.raises(BackendError, match=r"^PRECISION=int8 cannot run on openvino: the CPU has no native int8 "
                                           r"\(OpenVINO's OPTIMIZATION_CAPABILITIES: none\)$"):
        make(backend="openvino", info=info, precision="int8", capabilities=())   # openvino absent: ()


def test_an_explicit_variant_runs_even_when_recorded_slower():
    info = fake_info(("int8", "openvino", (100.0, 80.0), {}), ("bf16", "openvino", BF16_FAST, {}))
    chosen = make(backend="openvino", info=info, precision="int8").precision
    assert chosen.name == "int8" and "0.80x float32's images/s" in chosen.why


def test_f32_is_float32_whatever_the_bundle_records_and_asks_nothing():
    info = fake_info(("bf16", "openvino", BF16_FAST, {}), ("int8", "openvino", INT8_FAST, {}))
    system = FakeSystem()
    chosen = make(backend="openvino", info=info, precision="f32", system=system).precision
    assert (chosen.name, chosen.file, chosen.variant, chosen.why, system.asked) == (
        "f32", bundle_mod.ONNX, None, "PRECISION=f32: float32 model.onnx", 0)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_acl_runs_its_om_as_built_and_refuses_a_cpu_precision(precision):
    info = fake_info(("bf16", "openvino", BF16_FAST, {}), ("int8", "openvino", INT8_FAST, {}))
    for setting in ("auto", "f32"):
        p = make(backend="acl", device_ids=(0,), info=info, precision=setting, installed=("acl",), devices=1)
        assert (p.backend, p.precision.name, p.precision.file) == ("acl", "om", bundle_mod.OM)
        assert p.precision.why == "PRECISION=%s: model.om runs in the precision ATC built it with" % setting
    with pytest.raises(BackendError, match=r"^PRECISION=%s cannot run on the Ascend backend: model.om carries the "
                                           r"precision ATC built it with" % precision):
        make(backend="acl", device_ids=(0,), info=info, precision=precision, installed=("acl",), devices=1)
    # BACKEND=auto decides the precision for the backend it lands on: the CPU when no device answers
    p = make(backend="auto", device_ids=(0,), info=info, precision=precision, installed=("acl", "openvino"), devices=0)
    assert (p.backend, p.precision.name) == ("openvino", precision)


@pytest.mark.parametrize("hostile", ["INT8", "int8 ", "fp16", "", "auto\n", "int8; rm -rf /", "x" * 10000])
def test_an_unknown_precision_is_refused_in_one_line(hostile):
    with pytest.raises(BackendError) as e:
        make(backend="onnxruntime", precision=hostile)
    assert str(e.value).startswith("PRECISION=") and "\n" not in str(e.value)
    assert str(e.value).endswith("choose one of auto, f32, bf16, int8")


def test_without_a_bundle_record_the_plan_runs_float32():
    """plan() without `info` (benchmarks/serve_bench.py plans before it needs the bundle's records)."""
    p = plan(backend="openvino", device_ids=(0,), cpu_workers=1, threads=1, max_batch=8, cpus=2, system=FakeSystem())
    assert (p.precision.name, p.precision.file) == ("f32", bundle_mod.ONNX)
    with pytest.raises(BackendError, match="PRECISION=int8 cannot run on onnxruntime: the bundle records no int8"):
        plan(backend="onnxruntime", device_ids=(0,), cpu_workers=1, threads=1, max_batch=8, cpus=2, precision="int8",
             system=FakeSystem())
