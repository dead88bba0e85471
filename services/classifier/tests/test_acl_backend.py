"""The Ascend backend against the pyACL simulator (tests/acl_sim/acl.py), and the simulator's rules.

Nothing here ran on Ascend hardware: the simulator keeps pyACL's call shapes, return conventions
and error codes, and executes the bundle's ONNX model where the card would execute the .om.
The test bundle is a tiny random MobileNetV3-Small 0.35 (11 classes, 64x64) exported once per
module in a subprocess, so TensorFlow never enters this test process.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from classifier import backends
from classifier.backends import BackendError, acl_runtime
from classifier.backends.acl_runtime import probe_device
from mbv3 import bundle as bundle_mod

HERE = os.path.dirname(os.path.abspath(__file__))
SIM_DIR = os.path.join(HERE, "acl_sim")
TEST_SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "testsupport")
SIZE, CLASSES = 64, 11
PER_IMAGE = SIZE * SIZE * 3 * 4
PROFILES = [1, 2, 4, 8]
MBATCH = "ascend_mbatch_shape_data"

EXPORT = textwrap.dedent("""
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, sys.argv[2])
    from random_models import random_bundle
    root = sys.argv[1]
    random_bundle(os.path.join(root, "bundle"), "small", 0.35, %d, image_size=%d, seed=11)
""" % (CLASSES, SIZE))


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim():
    """The simulator as `acl`, only for this module (other tests must not find a fake pyACL)."""
    saved = sys.modules.pop("acl", None)
    sys.path.insert(0, SIM_DIR)
    try:
        import acl
        assert os.path.dirname(os.path.abspath(acl.__file__)) == SIM_DIR
        yield acl
    finally:
        sys.path.remove(SIM_DIR)
        sys.modules.pop("acl", None)
        if saved is not None:
            sys.modules["acl"] = saved


@pytest.fixture(autouse=True)
def fresh_process(sim, monkeypatch):
    """Each test is a new process as far as pyACL is concerned: a reset simulator, and a process
    runtime owner that has never called acl.init (the module's own is put back afterwards)."""
    sim.sim_reset()
    monkeypatch.setattr(acl_runtime, "RUNTIME", acl_runtime.AclRuntime())


@pytest.fixture(scope="module")
def bundles(sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("acl")
    result = subprocess.run([sys.executable, "-c", EXPORT, str(root), TEST_SUPPORT], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    base = str(root / "bundle")
    variants = {"dynamic": dict(batch_profiles=PROFILES), "aipp": dict(batch_profiles=PROFILES, aipp=True),
                "static": dict(), "static4": dict(static_batch=4)}
    out = {"plain": bundle_mod.load(base)}
    for name, kwargs in variants.items():
        path = str(root / name)
        shutil.copytree(base, path)
        sim.sim_write_om(path, **kwargs)
        out[name] = bundle_mod.load(path, verify=True)
    return out


@pytest.fixture(scope="module")
def reference(bundles):
    import onnxruntime as ort
    session = ort.InferenceSession(bundles["plain"].file(bundle_mod.ONNX), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": x})[0]


def acl_backend(bundle, device_id=0):
    """The Ascend backend for `bundle`, as the service builds it with BACKEND=acl."""
    return backends.create(bundle, backend="acl", device_id=device_id)


def images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def assert_close(got, want):
    scale = float(np.abs(want).max())
    assert scale > 0.1  # real signal, not near-zero logits
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(np.abs(got - want).max()) <= 1e-5 * max(scale, 1.0)


def in_thread(fn, name="worker-2"):
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised on the test thread
            box["error"] = e
    t = threading.Thread(target=target, name=name)
    t.start()
    t.join(60)
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- the backend ---------------------------------------------------------------------------------

def test_dynamic_batch_matches_onnxruntime_pads_to_the_smallest_profile_and_reuses_buffers(sim, bundles, reference):
    backend = acl_backend(bundles["dynamic"])
    try:
        assert backend.max_batch == 8 and backend.input_dtype is np.float32
        assert "dynamic batch 1,2,4,8" in backend.describe() and "device 0" in backend.describe()
        seen = set()
        for n, profile in ((1, 1), (3, 4), (8, 8), (2, 2), (5, 8)):
            x = images(n, seed=n)
            mallocs = len(sim.sim_calls_named("acl.rt.malloc"))
            got = backend.run(x)
            assert_close(got, reference(x))
            assert sim.sim_calls_named("acl.mdl.set_dynamic_batch_size")[-1].args[3] == profile
            assert sim.sim_calls_named("acl.mdl.get_cur_output_dims")[-1].ret == 0
            made = len(sim.sim_calls_named("acl.rt.malloc")) - mallocs
            assert made == (0 if profile in seen else 3), (n, made)  # input, output, mbatch: once per profile
            seen.add(profile)
            mallocs = len(sim.sim_calls_named("acl.rt.malloc"))
            assert_close(backend.run(images(n, seed=100 + n)), reference(images(n, seed=100 + n)))
            assert len(sim.sim_calls_named("acl.rt.malloc")) == mallocs  # the second run allocates nothing
        sizes = sorted(size for size, _ in sim.sim_state()["device_memory"].values())
        assert sorted(s for s in sizes if s > 8) == sorted([b * PER_IMAGE for b in PROFILES] +
                                                           [b * CLASSES * 4 for b in PROFILES])
        assert len(sim.sim_calls_named("acl.rt.malloc_host")) == 4  # one host output buffer per profile
        assert backend.run(images(0)).shape == (0, CLASSES)
        x = images(11, seed=5)  # more than the largest profile: split, 8 + 4(3 padded)
        assert_close(backend.run(x), reference(x))
        assert sim.sim_errors == []  # the backend never broke a rule on the way
    finally:
        backend.close()
    assert sim.sim_leaks() == []


def test_static_om_pads_to_its_batch_and_chunks(sim, bundles, reference):
    for name, static in (("static", 1), ("static4", 4)):
        backend = acl_backend(bundles[name])
        try:
            assert backend.max_batch == static and "static batch %d" % static in backend.describe()
            executes = len(sim.sim_calls_named("acl.mdl.execute"))
            x = images(3, seed=static)
            assert_close(backend.run(x), reference(x))
            assert len(sim.sim_calls_named("acl.mdl.execute")) - executes == (3 if static == 1 else 1)
            assert not sim.sim_calls_named("acl.mdl.set_dynamic_batch_size")
        finally:
            backend.close()
        assert sim.sim_leaks() == []


def test_aipp_uint8_path_matches_the_float_path(sim, bundles):
    aipp = acl_backend(bundles["aipp"])
    floating = acl_backend(bundles["dynamic"])  # two contexts on one thread: run() rebinds
    try:
        assert aipp.input_dtype is np.uint8 and "AIPP" in aipp.describe()
        assert sim.mdl.get_input_size_by_index(aipp.desc, aipp.input_index) == 8 * SIZE * SIZE * 3
        rgb = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
        got = aipp.run(rgb)
        want = floating.run((rgb.astype(np.float32) - 127.5) / 127.5)
        assert float(np.abs(got - want).max()) <= 1e-4 * float(np.abs(want).max())
        with pytest.raises(BackendError, match="uint8"):
            aipp.run(rgb.astype(np.float32))
    finally:
        aipp.close()
        floating.close()
    assert sim.sim_leaks() == []


def test_close_tears_down_in_the_documented_order_and_leaves_nothing(sim, bundles):
    backend = acl_backend(bundles["dynamic"])
    for n in (1, 3, 8):
        backend.run(images(n))
    start = len(sim.sim_calls)
    backend.close()
    names = [c.name for c in sim.sim_calls[start:]]
    assert all(c.ret in (0, None) for c in sim.sim_calls[start:]), sim.sim_calls[start:]
    assert sim.sim_leaks() == [] and backend.close_errors == []

    def last(name):
        return max(i for i, n in enumerate(names) if n == name)

    def first(name):
        return names.index(name)
    assert names.count("acl.destroy_data_buffer") == 3 * 3 and names.count("acl.mdl.destroy_dataset") == 3 * 2
    assert names.count("acl.rt.free") == 3 * 3 and names.count("acl.rt.free_host") == 3
    assert last("acl.rt.free") < first("acl.mdl.unload") < first("acl.mdl.destroy_desc") < \
        first("acl.rt.destroy_context") < first("acl.rt.reset_device")
    backend.close()  # idempotent
    assert len(sim.sim_calls) == start + len(names)
    with pytest.raises(BackendError, match="closed"):
        backend.run(images(1))

    state = sim.sim_state()
    assert state["initialised"] and state["devices"] == {} and state["contexts"] == []
    acl_runtime.finalize_runtime()  # what atexit does
    assert sim.sim_calls_named("acl.finalize")[-1].ret == 0 and not sim.sim_state()["initialised"]
    with pytest.raises(BackendError, match="once per process"):
        acl_backend(bundles["dynamic"])
    assert len(sim.sim_calls_named("acl.init")) == 1


def test_an_injected_execute_failure_names_the_call_and_code_and_the_next_run_succeeds(sim, bundles, reference):
    backend = acl_backend(bundles["dynamic"])
    try:
        sim.sim_fail_next_execute(507011)
        with pytest.raises(BackendError) as err:
            backend.run(images(2))
        assert "acl.mdl.execute returned 507011" in str(err.value) and "ACL_ERROR_RT_MODEL_EXECUTE" in str(err.value)
        assert not err.value.fatal
        x = images(2, seed=9)
        assert_close(backend.run(x), reference(x))
    finally:
        backend.close()
    assert sim.sim_leaks() == []


def test_a_lost_device_is_fatal_and_close_still_releases_everything(sim, bundles):
    backend = acl_backend(bundles["dynamic"])
    backend.run(images(3))
    sim.sim_lose_device(0)
    with pytest.raises(BackendError) as err:
        backend.run(images(3))
    assert err.value.fatal and "507899" in str(err.value)
    with pytest.raises(BackendError) as again:  # stays broken until reloaded
        backend.run(images(1))
    assert again.value.fatal
    backend.close()  # never raises
    assert any("507899" in e for e in backend.close_errors)
    assert sim.sim_leaks() == []
    ok, why = probe_device(0)
    assert not ok and "507899" in why

    sim.sim_restore_device(0)  # what the service does after a fatal error: close, then load again
    backend = acl_backend(bundles["dynamic"])
    try:
        assert backend.run(images(2)).shape == (2, CLASSES)
    finally:
        backend.close()
    assert [c.ret for c in sim.sim_calls_named("acl.init")] == [0]  # the one acl.init of the process
    assert sim.sim_leaks() == []


def test_an_allocation_failure_is_reported_and_the_half_made_slot_released(sim, bundles, reference):
    backend = acl_backend(bundles["dynamic"])
    try:
        backend.run(images(1))
        sim.sim_fail_next("acl.rt.malloc_host", 207001)
        with pytest.raises(BackendError, match=r"acl.rt.malloc_host\(\d+\) returned 207001") as err:
            backend.run(images(2))
        assert not err.value.fatal
        assert len(sim.sim_state()["device_memory"]) == 3  # only batch 1's slot: batch 2's were freed
        x = images(2, seed=4)
        assert_close(backend.run(x), reference(x))
    finally:
        backend.close()
    assert sim.sim_leaks() == []


def test_a_failed_load_raises_and_leaves_nothing_behind(sim, bundles, tmp_path):
    broken = str(tmp_path / "broken")
    shutil.copytree(bundles["dynamic"].path, broken)
    with open(os.path.join(broken, "model.om"), "w") as f:
        f.write("not an om")
    with pytest.raises(BackendError, match=r"acl.mdl.load_from_file\(.*\) returned 100013") as err:
        acl_backend(bundle_mod.load(broken))
    assert err.value.fatal
    assert sim.sim_leaks() == [] and sim.sim_state()["devices"] == {}

    os.remove(os.path.join(broken, "model.om"))
    with pytest.raises(BackendError, match="model.om.*ATC"):
        acl_backend(bundle_mod.load(broken))

    bundle = bundle_mod.load(bundles["aipp"].path)  # metadata says float32, the .om takes uint8
    bundle.info.om.aipp, bundle.info.om.input_dtype = False, "float32"
    with pytest.raises(BackendError, match=r"om.aipp=False \(float32 input\), but the model's input is %d bytes.*"
                                           r"a batch of uint8 images: an .om built with AIPP" % (8 * SIZE * SIZE * 3)):
        acl_backend(bundle)
    assert sim.sim_leaks() == []

    bundle.info.om.aipp = True  # and input_dtype still float32: a record that contradicts itself
    with pytest.raises(BackendError, match="contradicts itself"):
        acl_backend(bundle)

    bundle.info.om = None  # no record: not built by `mbv3 om`, and AIPP is never guessed from the model
    with pytest.raises(BackendError, match="no `om` record.*`mbv3 om --bundle") as err:
        acl_backend(bundle)
    assert err.value.fatal
    assert sim.sim_leaks() == [] and sim.sim_state()["devices"] == {}


def test_probe_device(sim, bundles):
    assert probe_device(0) == (True, "")
    assert sim.sim_leaks() == [] and sim.sim_state()["devices"] == {}
    ok, why = probe_device(3)
    assert not ok and "3" in why
    backend = acl_backend(bundles["dynamic"])  # a probe does not spend the one acl.init
    backend.run(images(1))
    backend.close()
    assert [c.ret for c in sim.sim_calls_named("acl.init")] == [0]
    assert sim.sim_leaks() == []


def test_the_backend_works_from_a_second_thread_via_set_context(sim, bundles, reference):
    backend = acl_backend(bundles["dynamic"])
    try:
        x = images(3, seed=2)
        assert_close(in_thread(lambda: backend.run(x), "worker-2"), reference(x))
        assert [c.ret for c in sim.sim_calls if c.name == "acl.rt.set_context" and c.thread == "worker-2"] == [0]
        assert_close(backend.run(x), reference(x))  # and back on the creating thread
    finally:
        in_thread(backend.close, "worker-3")
    assert sim.sim_leaks() == []

    def service_pattern():  # created, used and closed on one worker thread: no set_context at all
        b = acl_backend(bundles["dynamic"])
        try:
            return b.run(x)
        finally:
            b.close()
    before = len(sim.sim_calls_named("acl.rt.set_context"))
    assert_close(in_thread(service_pattern, "device-0"), reference(x))
    assert len(sim.sim_calls_named("acl.rt.set_context")) == before
    assert sim.sim_leaks() == []


def test_older_pyacl_without_bytes_to_ptr_uses_numpy_to_ptr(sim, bundles, reference):
    sim.sim_reset(legacy_util=True)
    assert not hasattr(sim.util, "bytes_to_ptr")
    backend = acl_backend(bundles["dynamic"])
    try:
        x = images(3, seed=6)
        assert_close(backend.run(x), reference(x))
        assert sim.sim_calls_named("acl.util.numpy_to_ptr") and sim.sim_calls_named("acl.util.ptr_to_numpy")
    finally:
        backend.close()
    assert sim.sim_leaks() == []


def test_auto_selects_acl_and_the_service_never_imports_tensorflow(bundles):
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from classifier import backends
        from mbv3 import bundle
        plan = backends.plan(backend="auto", device_ids=(0,), cpu_workers=1, threads=1, max_batch=8, cpus=2)
        print(plan.why)
        b = backends.create(bundle.load(sys.argv[1]), backend=plan.backend, device_id=plan.devices[0])
        print(b.name, b.run(np.zeros((2, 64, 64, 3), np.float32)).shape)
        b.close()
        assert "tensorflow" not in sys.modules, "the service imported TensorFlow"
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SIM_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    result = subprocess.run([sys.executable, "-c", script, bundles["dynamic"].path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout
    assert "BACKEND=auto: using acl" in result.stdout and "acl (2, %d)" % CLASSES in result.stdout


# --- the simulator's rules -----------------------------------------------------------------------

def open_model(sim, bundle):
    assert sim.init() == 0
    assert sim.rt.set_device(0) == 0
    ctx, ret = sim.rt.create_context(0)
    assert ret == 0
    model_id, ret = sim.mdl.load_from_file(bundle.file("model.om"))
    assert ret == 0
    desc = sim.mdl.create_desc()
    assert sim.mdl.get_desc(desc, model_id) == 0
    return ctx, model_id, desc


def make_io(sim, desc, batch, host_input=False):
    """(in_ds, out_ds, device pointers, buffers) for the float dynamic model at `batch`."""
    idx, ret = sim.mdl.get_input_index_by_name(desc, MBATCH)
    assert ret == 0 and idx == 1
    if host_input:
        in_ptr, ret = sim.rt.malloc_host(batch * PER_IMAGE)
    else:
        in_ptr, ret = sim.rt.malloc(batch * PER_IMAGE, sim.ACL_MEM_MALLOC_HUGE_FIRST)
    mb_ptr, _ = sim.rt.malloc(sim.mdl.get_input_size_by_index(desc, idx), 0)
    out_ptr, _ = sim.rt.malloc(batch * CLASSES * 4, 0)
    in_ds, out_ds = sim.mdl.create_dataset(), sim.mdl.create_dataset()
    bufs = [sim.create_data_buffer(in_ptr, batch * PER_IMAGE), sim.create_data_buffer(mb_ptr, 8),
            sim.create_data_buffer(out_ptr, batch * CLASSES * 4)]
    for ds, buf in ((in_ds, bufs[0]), (in_ds, bufs[1]), (out_ds, bufs[2])):
        assert sim.mdl.add_dataset_buffer(ds, buf) == (ds, 0)
    return in_ds, out_ds, [in_ptr, mb_ptr, out_ptr], bufs


def last_reason(sim):
    return sim.sim_errors[-1].reason


def test_sim_init_only_once_per_process(sim):
    assert sim.init() == 0
    assert sim.init() == sim.ACL_ERROR_REPEAT_INITIALIZE == 100002
    assert sim.finalize() == 0
    assert sim.finalize() == 100037  # ACL_ERROR_REPEAT_FINALIZE
    assert sim.init() == 100002 and "once per process" in last_reason(sim)


def test_sim_nothing_works_before_init(sim, bundles):
    assert sim.rt.set_device(0) == sim.ACL_ERROR_UNINITIALIZE == 100001
    assert sim.rt.malloc(64, 0) == (0, 100001)
    assert sim.mdl.load_from_file(bundles["dynamic"].file("model.om")) == (0, 100001)
    assert sim.rt.create_context(0) == (0, 100001)
    assert sim.finalize() == 100001
    assert sim.init() == 0
    assert sim.rt.set_device(5) == 107001  # ACL_ERROR_RT_INVALID_DEVICEID


def test_sim_contexts_are_bound_to_the_thread_that_made_them(sim, bundles):
    ctx, model_id, desc = open_model(sim, bundles["dynamic"])
    in_ds, out_ds, ptrs, bufs = make_io(sim, desc, 1)
    assert sim.mdl.set_dynamic_batch_size(model_id, in_ds, 1, 1) == 0
    assert sim.mdl.execute(model_id, in_ds, out_ds) == 0

    def without_set_context():
        return sim.rt.malloc(64, 0), sim.mdl.execute(model_id, in_ds, out_ds), sim.rt.memcpy(ptrs[0], 8, ptrs[2], 8, 3)
    assert in_thread(without_set_context, "other") == ((0, 107002), 107002, 107002)  # ACL_ERROR_RT_CONTEXT_NULL
    assert [c.thread for c in sim.sim_calls if c.ret == 107002] == ["other"] * 3
    assert "set_context" in last_reason(sim)

    def with_set_context():
        ret = sim.rt.set_context(ctx)
        ptr, ret2 = sim.rt.malloc(64, 0)
        return ret, ret2, sim.mdl.execute(model_id, in_ds, out_ds), sim.rt.free(ptr)
    assert in_thread(with_set_context) == (0, 0, 0, 0)

    def in_the_default_context():  # set_device makes the device's default context current, not ours
        assert sim.rt.set_device(0) == 0
        ret = sim.mdl.execute(model_id, in_ds, out_ds)
        assert sim.rt.reset_device(0) == 0
        return ret
    assert in_thread(in_the_default_context) == 107004  # ACL_ERROR_RT_MODEL_CONTEXT


def test_sim_memcpy_checks_bounds_and_direction(sim):
    assert sim.init() == 0 and sim.rt.set_device(0) == 0
    dev, ret = sim.rt.malloc(100, sim.ACL_MEM_MALLOC_HUGE_FIRST)
    assert ret == 0 and sim.sim_state()["device_memory"][dev] == (100, 160)  # round up to 32, plus 32
    host, ret = sim.rt.malloc_host(100)
    data = bytes(range(100))
    src = sim.util.bytes_to_ptr(data)
    h2d, d2h = sim.ACL_MEMCPY_HOST_TO_DEVICE, sim.ACL_MEMCPY_DEVICE_TO_HOST
    assert sim.rt.memcpy(dev, 100, src, 100, h2d) == 0
    assert sim.rt.memcpy(dev, 100, src, 101, h2d) == 107000 and "larger than dst_max" in last_reason(sim)
    assert sim.rt.memcpy(dev, 120, src, 100, h2d) == 107000 and "out of bounds by 20" in last_reason(sim)
    assert sim.rt.memcpy(dev + 50, 60, src, 60, h2d) == 107000
    assert sim.rt.memcpy(dev, 100, src + 10, 100, h2d) == 107000 and "source" in last_reason(sim)
    assert sim.rt.memcpy(host, 100, dev, 100, h2d) == 107016  # ACL_ERROR_RT_INVALID_MEMORY_TYPE
    assert sim.rt.memcpy(dev, 100, src, 100, d2h) == 107016 and "from host memory to device" in last_reason(sim)
    assert sim.rt.memcpy(src, 100, dev, 100, d2h) == 107000 and "read-only" in last_reason(sim)
    assert sim.rt.memcpy(host, 100, dev, 100, d2h) == 0
    assert sim.util.ptr_to_bytes(host, 100) == data
    with pytest.raises(sim.SimFault):
        sim.util.ptr_to_bytes(dev, 10)  # real pyACL would crash reading device memory
    assert sim.rt.free(dev) == 0 and sim.rt.free_host(host) == 0


def test_sim_follows_pyacl_where_its_sources_say(sim):
    """ACL_MEMCPY_DEFAULT (4) copies in the direction the pointers give (aclrtMemcpyKind, CANN 8.1+);
    bytes_to_ptr takes bytes only (pyACL's bytes_convert.cpp: PyBytes_Check, else ValueError)."""
    assert sim.init() == 0 and sim.rt.set_device(0) == 0
    dev, _ = sim.rt.malloc(64, sim.ACL_MEM_MALLOC_HUGE_FIRST)
    host, _ = sim.rt.malloc_host(64)
    data = bytes(range(64))
    assert sim.ACL_MEMCPY_DEFAULT == 4
    assert sim.rt.memcpy(dev, 64, sim.util.bytes_to_ptr(data), 64, 4) == 0          # host to device
    assert sim.rt.memcpy(host, 64, dev, 64, 4) == 0                                 # device to host
    assert sim.util.ptr_to_bytes(host, 64) == data
    assert sim.rt.memcpy(dev, 64, host, 65, 4) == 107000                            # bounds still hold
    assert sim.rt.memcpy(dev, 64, host, 64, 8) == 107000 and "unknown memcpy kind 8" in last_reason(sim)
    for not_bytes in (bytearray(data), memoryview(data), "text"):
        with pytest.raises(ValueError, match="needs an byte as argument"):
            sim.util.bytes_to_ptr(not_bytes)
    assert sim.rt.free(dev) == 0 and sim.rt.free_host(host) == 0


def test_sim_double_free_and_use_after_free(sim):
    assert sim.init() == 0 and sim.rt.set_device(0) == 0
    dev, _ = sim.rt.malloc(256, 0)
    host, _ = sim.rt.malloc_host(256)
    assert sim.rt.free(dev + 32) == 207002 and "not its start" in last_reason(sim)
    assert sim.rt.free(host) == 207002 and "free_host" in last_reason(sim)
    assert sim.rt.free_host(dev) == 207002
    assert sim.rt.free(dev) == 0
    assert sim.rt.free(dev) == 207002 and "double free" in last_reason(sim)  # ACL_ERROR_RT_MEMORY_FREE
    assert sim.rt.memcpy(dev, 256, host, 256, sim.ACL_MEMCPY_HOST_TO_DEVICE) == 107000
    assert "use after free" in last_reason(sim)
    assert sim.rt.free_host(host) == 0 and sim.rt.free_host(host) == 207002
    buf = sim.create_data_buffer(dev, 256)
    assert sim.destroy_data_buffer(buf) == 0 and sim.destroy_data_buffer(buf) == 100000


def test_sim_execute_checks_datasets_and_their_memory(sim, bundles):
    ctx, model_id, desc = open_model(sim, bundles["dynamic"])
    in_ds, out_ds, ptrs, bufs = make_io(sim, desc, 2)
    assert sim.mdl.execute(model_id, in_ds, out_ds) == 100000 and "set_dynamic_batch_size" in last_reason(sim)
    assert sim.mdl.set_dynamic_batch_size(model_id, in_ds, 1, 3) == 145013 and "profiles" in last_reason(sim)
    assert sim.mdl.set_dynamic_batch_size(model_id, in_ds, 1, 4) == 0
    assert sim.mdl.execute(model_id, in_ds, out_ds) == 107000 and "needs" in last_reason(sim)  # buffers for 2, not 4
    assert sim.mdl.set_dynamic_batch_size(model_id, in_ds, 1, 2) == 0
    assert sim.mdl.execute(model_id, in_ds, out_ds) == 0
    dims, ret = sim.mdl.get_cur_output_dims(desc, 0)
    assert ret == 0 and dims["dims"] == [2, CLASSES]
    assert sim.mdl.get_dynamic_batch(desc) == ({"batch": PROFILES, "batchCount": 4}, 0)
    assert sim.mdl.get_input_size_by_index(desc, 0) == 8 * PER_IMAGE  # the largest profile
    assert sim.mdl.execute(model_id, out_ds, out_ds) == 100017  # ACL_ERROR_MODEL_INPUT_NOT_MATCH
    assert sim.rt.free(ptrs[0]) == 0
    assert sim.mdl.execute(model_id, in_ds, out_ds) == 107000 and "use after free" in last_reason(sim)
    host_in, host_out, _, _ = make_io(sim, desc, 1, host_input=True)
    assert sim.mdl.set_dynamic_batch_size(model_id, host_in, 1, 1) == 0
    assert sim.mdl.execute(model_id, host_in, host_out) == 107000 and "host memory" in last_reason(sim)

    static_ctx_model, _ = sim.mdl.load_from_file(bundles["static"].file("model.om"))
    assert sim.mdl.set_dynamic_batch_size(static_ctx_model, in_ds, 1, 1) == 100019  # ACL_ERROR_MODEL_NOT_DYNAMIC
    assert sim.mdl.execute(99, in_ds, out_ds) == 100011  # ACL_ERROR_INVALID_MODEL_ID


def test_sim_unload_refuses_while_datasets_used_with_the_model_are_alive(sim, bundles):
    ctx, model_id, desc = open_model(sim, bundles["dynamic"])
    in_ds, out_ds, ptrs, bufs = make_io(sim, desc, 1)
    assert sim.mdl.set_dynamic_batch_size(model_id, in_ds, 1, 1) == 0
    assert sim.mdl.execute(model_id, in_ds, out_ds) == 0
    assert sim.mdl.unload(model_id) == 148051  # ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED
    assert "still alive" in last_reason(sim)
    for buf in bufs:
        assert sim.destroy_data_buffer(buf) == 0
    assert sim.mdl.unload(model_id) == 148051  # the datasets still are
    assert sim.mdl.destroy_dataset(in_ds) == 0 and sim.mdl.destroy_dataset(out_ds) == 0
    assert sim.mdl.destroy_dataset(in_ds) == 100000
    assert sim.mdl.unload(model_id) == 0
    assert sim.mdl.unload(model_id) == 100011


def test_sim_finalize_reports_every_leak_then_succeeds_once_released(sim, bundles):
    ctx, model_id, desc = open_model(sim, bundles["dynamic"])
    in_ds, out_ds, ptrs, bufs = make_io(sim, desc, 1)
    host, _ = sim.rt.malloc_host(64)
    stream, ret = sim.rt.create_stream()
    assert ret == 0
    assert sim.rt.destroy_context(ctx) == 148051  # allocations and the model live in it
    assert sim.rt.reset_device(0) == 148051  # the context is alive
    assert sim.finalize() == 148051
    leaks = sim.sim_leaks()
    assert leaks == sim.sim_last_finalize_leaks and "still held" in last_reason(sim)
    for kind, count in (("data buffer", 3), ("dataset", 2), ("device memory", 3), ("host memory", 1), ("model %d " % model_id, 1),
                        ("model desc", 1), ("stream", 1), ("context", 1), ("device 0", 1)):
        assert sum(line.startswith(kind) for line in leaks) == count, (kind, leaks)
    assert sim.sim_state()["initialised"]

    for buf in bufs:
        assert sim.destroy_data_buffer(buf) == 0
    assert sim.mdl.destroy_dataset(in_ds) == 0 and sim.mdl.destroy_dataset(out_ds) == 0
    assert all(sim.rt.free(p) == 0 for p in ptrs) and sim.rt.free_host(host) == 0
    assert sim.mdl.unload(model_id) == 0 and sim.mdl.destroy_desc(desc) == 0
    assert sim.rt.destroy_stream(stream) == 0 and sim.rt.destroy_context(ctx) == 0
    assert sim.rt.reset_device(0) == 0 and sim.rt.reset_device(0) == 107001
    assert sim.finalize() == 0 and sim.sim_leaks() == []


def test_sim_lost_device_fails_every_device_call(sim, bundles):
    ctx, model_id, desc = open_model(sim, bundles["dynamic"])
    sim.sim_lose_device(0)
    assert sim.rt.malloc(64, 0) == (0, 507899)
    assert sim.mdl.load_from_file(bundles["dynamic"].file("model.om")) == (0, 507899)
    assert sim.rt.set_device(0) == 507899
    assert sim.mdl.unload(model_id) == 507899  # but the model is gone with the device
    assert sim.mdl.destroy_desc(desc) == 0  # host-side objects are unaffected
    assert sim.rt.destroy_context(ctx) == 507899 and sim.rt.reset_device(0) == 507899
    assert sim.sim_leaks() == [] and sim.finalize() == 0
