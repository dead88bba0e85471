"""Backend selection: plan() resolves the settings once, at start-up, into a Plan (which backend,
which devices or how many CPU workers, threads, batch); create() builds one worker's backend from
it. `auto` takes the Ascend backend when pyACL imports and the devices answer, otherwise the first
CPU backend of CPU_PREFERENCE that imports, and says which and why."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Tuple

from mbv3.bundle import OM, ONNX

from .base import Backend, BackendError  # noqa: F401

# What BACKEND may say. A new backend is a module here (a Backend subclass), its name in this tuple
# and its branch in create(): nothing else in the service names backends.
CHOICES = ("auto", "onnxruntime", "openvino", "acl")
# What PRECISION may say: the OpenVINO backend's inference precision (backends/openvino.py's
# choose_precision); ONNX Runtime and the Ascend backend run the model as it is and ignore it.
PRECISIONS = ("auto", "f32", "bf16")
# BACKEND=auto's CPU engine, in order of preference: `make bench-serve` (--compare-backends) at 1 and 32 clients
# decided it (README, Measured numbers)
CPU_PREFERENCE = ("openvino", "onnxruntime")


class System:
    """What plan() asks of the machine: installed packages and Ascend devices. Tests pass their own."""

    @staticmethod
    def installed(package):
        return importlib.util.find_spec(package) is not None

    @staticmethod
    def count_devices():
        """How many Ascend devices pyACL sees (inside a container: the chips handed to it, which
        pyACL numbers from 0); BackendError when it cannot say."""
        try:
            from .acl_runtime import device_count
            return device_count()
        except ImportError as e:
            raise BackendError("pyACL not importable (%s)" % e)

    @staticmethod
    def visibility():
        """(chips, text): the /dev/davinciN in this container and how they got here, or what is
        missing (acl_runtime.device_visibility; reads /dev and the environment, imports no pyACL)."""
        from .acl_runtime import device_visibility
        return device_visibility()

    @staticmethod
    def probe(device_id):
        """(True, "") when pyACL initialises and device `device_id` can be opened, else (False, reason)."""
        from .acl_runtime import probe_device
        return probe_device(device_id)


@dataclass(frozen=True)
class Plan:
    """What serves: one concrete backend, its workers (one per Ascend device, or CPU workers), the
    CPU threads each uses and the largest run. Resolved once at start-up; workers are built from it."""
    backend: str                    # one of CHOICES but auto
    devices: Tuple[int, ...] = ()   # Ascend device ids, one worker each (acl)
    cpu_workers: int = 0            # CPU workers (openvino, onnxruntime)
    threads: int = 0                # CPU threads per worker; 0 on a device
    max_batch: int = 8
    why: str = ""                   # for the start-up log: how BACKEND=auto chose; the chips acl found

    @property
    def on_devices(self):
        return self.backend == "acl"


def plan(*, backend, device_ids, cpu_workers, threads, max_batch, cpus, system=System):
    """The Plan for these settings on this machine. device_ids: a tuple, or "all" for every device
    pyACL counts; threads: per CPU worker, 0 to split `cpus` between the workers. BACKEND=auto serves
    on the Ascend devices when pyACL is installed and every listed device answers, on the CPU when
    none does (or pyACL is absent), and refuses a mix: serving on part of the devices would go
    unnoticed. BackendError says what is wrong."""
    if backend not in CHOICES:
        raise BackendError("unknown backend %r (one of %s)" % (backend, ", ".join(CHOICES)))
    why = ""
    if backend in ("acl", "auto") and (backend == "acl" or system.installed("acl")):
        try:
            devices = tuple(device_ids) if device_ids != "all" else _counted(system)
            if backend == "auto":
                _require_all_or_none(devices, system)
            return Plan("acl", devices=devices, max_batch=max_batch,
                        why="%susing acl on device(s) %s; chips in the container: %s" % (
                            "BACKEND=auto: " if backend == "auto" else "", ",".join(map(str, devices)),
                            system.visibility()[1]))
        except _NoDevice as e:
            if backend == "acl":
                raise BackendError(str(e))
            why = str(e)
    elif backend == "auto":
        why = "pyACL not installed"
    name = backend
    if backend == "auto":
        name, missing = cpu_choice(system)
        why = "BACKEND=auto: using %s (%s)" % (name, "; ".join(w for w in (why, missing) if w))
    count = max(1, cpu_workers)
    return Plan(name, cpu_workers=count, threads=threads or max(1, cpus // count), max_batch=max_batch, why=why)


class _NoDevice(BackendError):
    """No Ascend device to serve on: BACKEND=acl stops, BACKEND=auto serves on the CPU."""


def _counted(system):
    try:
        count = system.count_devices()
    except BackendError as e:
        raise _NoDevice("DEVICE_IDS=all: pyACL cannot count the devices: %s" % e)
    if not count:
        raise _NoDevice("DEVICE_IDS=all: pyACL sees no Ascend device: %s" % system.visibility()[1])
    return tuple(range(count))


def _require_all_or_none(devices, system):
    failed = []
    for device in devices:
        ok, reason = system.probe(device)
        if not ok:
            failed.append("device %d: %s" % (device, reason))
    if len(failed) == len(devices):
        raise _NoDevice("; ".join(failed))
    if failed:
        raise BackendError("BACKEND=auto: some devices answer and some do not (%s): fix DEVICE_IDS, or set "
                           "BACKEND=acl to require every device" % "; ".join(failed))


def cpu_choice(system=System):
    """(name, why) of BACKEND=auto's CPU backend: the first of CPU_PREFERENCE whose package imports."""
    missing = []
    for name in CPU_PREFERENCE:
        if system.installed(name):
            return name, "; ".join(missing)
        missing.append("%s not installed" % name)
    return CPU_PREFERENCE[-1], "; ".join(missing)


def create(bundle, *, backend, device_id=0, threads=1, max_batch=8, cache_dir="", precision="auto"):
    """The backend for `bundle` (mbv3.bundle.Bundle): `backend` is a Plan's (not auto); the Ascend
    backend runs on `device_id`, the CPU backends with `threads` and runs of up to `max_batch`;
    OpenVINO keeps its compiled models in `cache_dir` when one is given and runs in the precision
    `precision` (PRECISIONS) allows."""
    if backend == "acl":
        from .acl import AclBackend
        om = bundle.info.om
        return AclBackend(bundle.file(om.file if om else OM), bundle.info, device_id)
    if backend == "openvino":
        from .openvino import OpenVinoBackend
        return OpenVinoBackend(bundle.file(ONNX), bundle.info, threads, max_batch, cache_dir, precision)
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend
        return OnnxRuntimeBackend(bundle.file(ONNX), bundle.info, threads, max_batch)
    raise BackendError("no backend named %r: plan() resolves %s first" % (backend, CHOICES[0]))


def release_process_resources():
    """At service shutdown, after the backend is closed: pyACL is finalized once per process, so
    its finalize belongs to the end of the process, not to a backend's close (which a fatal error
    follows with a reload)."""
    acl_runtime = sys.modules.get(__name__ + ".acl_runtime")
    if acl_runtime is not None:
        acl_runtime.finalize_runtime()
