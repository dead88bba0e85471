"""backends.plan(): every combination of BACKEND, DEVICE_IDS, installed packages and answering
devices, resolved once into one concrete backend with its workers, threads and batch. No backend is
loaded: the machine is a FakeSystem."""
import pytest

from classifier import backends
from classifier.backends import BackendError, plan
from svc_support import bundle_dir  # noqa: F401  (fixture)


class FakeSystem:
    def __init__(self, installed=("openvino", "onnxruntime"), devices=0, answering=None, count_error=None):
        """devices: how many pyACL counts; answering: the ids that open (default: all counted)."""
        self.packages = set(installed)
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

    def probe(self, device):
        self.probed.append(device)
        return (True, "") if device in self.answering else (False, "no Ascend device %d" % device)


def make(backend="auto", device_ids=(0,), cpu_workers=1, threads=0, max_batch=8, cpus=4, **system):
    return plan(backend=backend, device_ids=device_ids, cpu_workers=cpu_workers, threads=threads,
                max_batch=max_batch, cpus=cpus, system=FakeSystem(**system))


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
    p = plan(backend="auto", device_ids=(1, 3), cpu_workers=2, threads=0, max_batch=4, cpus=4, system=system)
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
    p = plan(backend="acl", device_ids="all", cpu_workers=1, threads=2, max_batch=8, cpus=4, system=system)
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


def test_create_takes_only_a_planned_backend(bundle_dir):  # noqa: F811
    from mbv3 import bundle
    with pytest.raises(BackendError, match="plan\\(\\) resolves auto first"):
        backends.create(bundle.load(bundle_dir), backend="auto")


def test_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        make(backend="cuda")
