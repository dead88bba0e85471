"""Backend selection: plan() resolves the settings once, at start-up, into a Plan (which backend,
which devices or how many CPU workers, threads, batch, and the precision it runs in); create() builds
one worker's backend from it. `auto` takes the Ascend backend when pyACL imports and the devices
answer, otherwise the first CPU backend of CPU_PREFERENCE that imports, and says which and why."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Optional, Tuple

from mbv3 import bundle as bundle_mod
from mbv3 import precision as variants
from mbv3.bundle import OM, ONNX

from .base import Backend, BackendError  # noqa: F401

# What BACKEND may say. A new backend is a module here (a Backend subclass), its name in this tuple
# and its branch in create(): nothing else in the service names backends.
CHOICES = ("auto", "onnxruntime", "openvino", "acl")
# What PRECISION may say (choose_precision): auto, float32, or a reduced-precision variant the bundle
# records for the planned backend's engine (bundle.PrecisionVariant.engine is the backend's name).
PRECISIONS = ("auto", "f32") + bundle_mod.PRECISIONS
# BACKEND=auto's CPU engine, in order of preference: `make bench-serve` (--compare-backends) at 1 and 32 clients
# decided it (README, Measured numbers). The precision does not change it: PRECISION=int8 with a
# record for onnxruntime only needs BACKEND=onnxruntime.
CPU_PREFERENCE = ("openvino", "onnxruntime")
ENGINE_NAMES = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
# PRECISION=auto's rank for a record without a measured speed: above float32 (1.0), below any measured gain
UNMEASURED = 1.0 + 1e-6
# CPU_WORKERS=0's most workers (auto_cpu_workers)
MAX_AUTO_CPU_WORKERS = 4


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
    def capabilities():
        """OpenVINO's OPTIMIZATION_CAPABILITIES for the CPU (e.g. BF16, INT8), or () without openvino."""
        try:
            import openvino as ov
        except ImportError:
            return ()
        return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))

    @staticmethod
    def probe(device_id):
        """(True, "") when pyACL initialises and device `device_id` can be opened, else (False, reason)."""
        from .acl_runtime import probe_device
        return probe_device(device_id)


@dataclass(frozen=True)
class Precision:
    """What a backend runs: float32 model.onnx, a reduced-precision variant the bundle records for
    the backend's engine, or on the Ascend backend the .om as ATC built it."""
    name: str = "f32"               # f32, bf16, int8; "om" on the Ascend backend
    file: str = ONNX                # the model file in the bundle
    why: str = ""                   # for the start-up log and /v1/model: why this one, in words
    variant: Optional[bundle_mod.PrecisionVariant] = None   # the record it runs on; None for f32 and the .om

    def summary(self):
        """The record's accuracy and speed (/v1/model's serving.variant), or None."""
        v = self.variant
        if v is None:
            return None
        speed = None
        if v.speed is not None:
            speed = dict(bundle_mod.to_plain(v.speed), ratio=round(v.speed.ratio, 4))
        return {"precision": v.precision, "engine": v.engine, "engine_version": v.engine_version,
                "split": v.split, "examples": v.examples, "float32": bundle_mod.to_plain(v.float32),
                "reduced": bundle_mod.to_plain(v.reduced), "top1_drop": v.top1_drop,
                "max_top1_drop": v.max_top1_drop, "top1_agreement": v.top1_agreement, "forced": v.forced,
                "validated": v.validated, "speed": speed}


F32 = Precision()


@dataclass(frozen=True)
class Plan:
    """What serves: one concrete backend, its workers (one per Ascend device, or CPU workers), the
    CPU threads each uses and the largest run. Resolved once at start-up; workers are built from it."""
    backend: str                    # one of CHOICES but auto
    devices: Tuple[int, ...] = ()   # Ascend device ids, one worker each (acl)
    cpu_workers: int = 0            # CPU workers (openvino, onnxruntime)
    threads: int = 0                # CPU threads per worker's batches; 0 on a device
    alone_threads: int = 0          # CPU threads of a lone image's run while no other worker runs; 0 on a device
    max_batch: int = 8
    why: str = ""                   # for the start-up log: how BACKEND=auto chose; the chips acl found
    precision: Precision = field(default=F32)   # what every worker runs (choose_precision)

    @property
    def on_devices(self):
        return self.backend == "acl"


def plan(*, backend, device_ids, cpu_workers, threads, max_batch, cpus, info=None, precision="auto", system=System):
    """The Plan for these settings on this machine. device_ids: a tuple, or "all" for every device
    pyACL counts; cpu_workers: 0 for auto_cpu_workers; threads: per CPU worker, 0 to split `cpus`
    between the workers' batches and give a lone image all of them; info: the bundle's
    ModelInfo (None: a bundle that records no variant); precision: PRECISION, resolved for the
    planned backend (choose_precision). BACKEND=auto
    serves on the Ascend devices when pyACL is installed and every listed device answers, on the CPU
    when none does (or pyACL is absent), and refuses a mix: serving on part of the devices would go
    unnoticed. BackendError says what is wrong, before any model loads."""
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
                            system.visibility()[1]),
                        precision=choose_precision(precision, "acl", info))
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
    # the CPU's capabilities matter only to OpenVINO's variants: nothing else asks OpenVINO
    capabilities = system.capabilities() if name == "openvino" and precision != "f32" else ()
    chosen = choose_precision(precision, name, info, capabilities)
    count = cpu_workers or auto_cpu_workers(cpus)
    per_worker = threads or max(1, cpus // count)
    return Plan(name, cpu_workers=count, threads=per_worker, alone_threads=threads or max(per_worker, cpus),
                max_batch=max_batch, why=why, precision=chosen)


def auto_cpu_workers(cpus):
    """CPU_WORKERS=0: one worker per CPU, at most MAX_AUTO_CPU_WORKERS. A worker running a batch on one
    thread does about 1.5x the images per core of one running it on two (no thread waits for the other
    at every layer, and none is preempted by the decoding threads mid-layer), so two one-thread workers
    on two cores serve more than one two-thread worker; a lone image still gets every core
    (Plan.alone_threads). Each worker holds its own models (about 0.2 GB resident for V3-Large 224
    in OpenVINO, docs/api.md), hence the cap."""
    return max(1, min(cpus, MAX_AUTO_CPU_WORKERS))


def choose_precision(setting, engine, info, capabilities=()):
    """The Precision `engine` (a planned backend's name) runs for PRECISION=`setting`, with the reason
    in words. info: the bundle's ModelInfo, or None for one without variants; capabilities: OpenVINO's
    OPTIMIZATION_CAPABILITIES for the CPU. A variant is usable when the bundle records it for this
    engine and its current files (ModelInfo.variant) and, on OpenVINO, the CPU runs it natively. auto
    takes the usable variant with the highest recorded speed-up over float32 (above 1; a record
    without speed ranks just above float32), else f32; f32 is float32 model.onnx; bf16 or int8 that
    cannot run is a BackendError. The Ascend backend runs its .om as ATC built it: only auto and f32 pass there."""
    if setting not in PRECISIONS:
        raise BackendError("PRECISION=%r: choose one of %s" % (setting, ", ".join(PRECISIONS)))
    if engine == "acl":
        om = info.om.file if info is not None and info.om else OM
        if setting not in ("auto", "f32"):
            raise BackendError("PRECISION=%s cannot run on the Ascend backend: %s carries the precision ATC built it "
                               "with (mbv3 om --precision-mode); set PRECISION=auto or f32" % (setting, om))
        return Precision("om", om, "PRECISION=%s: %s runs in the precision ATC built it with" % (setting, om))
    if setting == "f32":
        return Precision(why="PRECISION=f32: float32 %s" % ONNX)
    usable, missing = {}, {}
    for name in bundle_mod.PRECISIONS:
        record, problems = _usable(name, engine, info, capabilities)
        if problems:
            missing[name] = problems
        else:
            usable[name] = record
    if setting != "auto":
        if setting in missing:
            raise BackendError("PRECISION=%s cannot run on %s: %s" % (setting, engine, "; ".join(missing[setting])))
        return _variant(setting, usable[setting], engine)
    for name, record in sorted(usable.items(), key=lambda item: -_rank(item[1])):   # stable: PRECISIONS' order on ties
        if _rank(record) > 1.0:
            return _variant(setting, record, engine)
        missing[name] = ["recorded at %.2fx float32's images/s, no faster" % _rank(record)]
    return Precision(why="PRECISION=auto: f32, as %s" % "; ".join(
        "%s: %s" % (name, "; ".join(missing[name])) for name in bundle_mod.PRECISIONS if name in missing))


def _rank(record):
    return record.speed.ratio if record.speed is not None else UNMEASURED


def _usable(name, engine, info, capabilities):
    """(record, []) when `engine` can run precision `name` for this bundle, else (None, the reasons)."""
    if engine not in variants.RUNS_ON[name]:
        return None, ["%s does not run %s (%s does)" % (ENGINE_NAMES.get(engine, engine), name,
                                                        " or ".join("BACKEND=%s" % e for e in variants.RUNS_ON[name]))]
    problems = []
    record = info.variant(name, engine) if info is not None else None
    if record is None:
        if info is not None and any((v.precision, v.engine) == (name, engine) for v in info.variants or ()):
            problems.append("the bundle's %s record for %s was measured on other model files (their sha256 differs "
                            "from model.json's: run mbv3 quantize --precision %s again)" % (name, engine, name))
        else:
            others = sorted(e for e in variants.RUNS_ON[name] if e != engine and info is not None and info.variant(name, e))
            problems.append("the bundle records no %s variant validated on %s for its current files (mbv3 quantize "
                            "--precision %s)%s" % (name, engine, name, "; it records one for %s: set BACKEND=%s" % (
                                others[0], others[0]) if others else ""))
    if engine == "openvino" and variants.NATIVE[name] not in capabilities:
        problems.append("the CPU has no native %s (OpenVINO's OPTIMIZATION_CAPABILITIES: %s)"
                        % (name, ", ".join(capabilities) or "none"))
    return (None if problems else record), problems


def _variant(setting, record, engine):
    return Precision(record.precision, record.file or ONNX, variant=record,
                     why="PRECISION=%s: %s" % (setting, _validated(record, engine)))


def _validated(record, engine):
    """The record in a sentence: what it was measured on, what it loses, what it gains."""
    speed = record.speed
    gain = ("%.2fx float32's images/s (%.0f vs %.0f at batch %d, %s threads)" % (
        speed.ratio, speed.reduced, speed.float32, speed.batch, speed.threads or "default") if speed is not None
            else "speed not recorded")
    return ("%s (%s) validated on %d %s images with %s %s (top-1 %.4f vs float32 %.4f, %.2f points down, at most %s; "
            "top-1 agreement %.4f%s); %s%s" % (
                record.precision, record.file or ONNX, record.examples, record.split,
                ENGINE_NAMES.get(engine, engine), record.engine_version, record.reduced.top1, record.float32.top1,
                record.top1_drop, record.max_top1_drop, record.top1_agreement,
                "; recorded with --force" if record.forced else "", gain,
                "; the CPU has %s" % variants.NATIVE[record.precision] if engine == "openvino" else ""))


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


def create(bundle, *, backend, device_id=0, threads=1, alone_threads=0, max_batch=8, cache_dir="", precision=F32):
    """The backend for `bundle` (mbv3.bundle.Bundle): `backend` and `precision` are a Plan's (not
    auto); the Ascend backend runs on `device_id`, the CPU backends run precision.file in
    precision.name with `threads` (`alone_threads` for a lone image while no other worker runs; 0:
    `threads`) and runs of up to `max_batch`; OpenVINO keeps its compiled models in `cache_dir` when
    one is given."""
    if backend == "acl":
        from .acl import AclBackend
        om = bundle.info.om
        return AclBackend(bundle.file(om.file if om else OM), bundle.info, device_id)
    if backend == "openvino":
        from .openvino import OpenVinoBackend
        return OpenVinoBackend(bundle.file(precision.file), bundle.info, threads, max_batch, cache_dir, precision.name,
                               alone_threads=alone_threads)
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend
        return OnnxRuntimeBackend(bundle.file(precision.file), bundle.info, threads, max_batch, precision.name,
                                  alone_threads=alone_threads)
    raise BackendError("no backend named %r: plan() resolves %s first" % (backend, CHOICES[0]))


def release_process_resources():
    """At service shutdown, after the backend is closed: pyACL is finalized once per process, so
    its finalize belongs to the end of the process, not to a backend's close (which a fatal error
    follows with a reload)."""
    acl_runtime = sys.modules.get(__name__ + ".acl_runtime")
    if acl_runtime is not None:
        acl_runtime.finalize_runtime()
