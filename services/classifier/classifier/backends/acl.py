"""Ascend 310/310P: a bundle's `.om` (ATC output) through pyACL.

The call sequence is pyACL's documented one (set_device, create_context, load_from_file, model
desc, device buffers, datasets, memcpy, execute, copy back; teardown in reverse), every return code
is checked, and a failure becomes BackendError("acl.<call> returned <code> ..."); device-loss codes
make it fatal (the service then closes the backend and loads it again). acl.init and acl.finalize
belong to the process, not to a backend: acl_runtime.py owns them.

Threads: an ACL context is bound to the thread that created it. The service creates, runs and
closes a backend on one worker thread; run()/close() from another thread first make the context
current there with acl.rt.set_context (a lock serialises use of the one model id).

Batches: with batch profiles (ATC --dynamic_batch_size, input `ascend_mbatch_shape_data`) a batch
of N runs in the smallest profile >= N, zero-padded, and the output is cut back to N. A static .om
runs its fixed batch the same way. Device/host buffers and datasets are made once per profile on
first use and reused.

AIPP: whether the .om normalises inside the model (then it takes uint8 RGB NHWC and input_dtype is
np.uint8) is read from model.json's `om` record, which `mbv3 om` writes when it builds the .om; it
is never inferred from the model. A model whose input size contradicts the record is a load error
naming both, and a .om without a record (not built by `mbv3 om`) is a load error saying to run it:
float32 and uint8 inputs of different batch sizes can have the same byte size, so no guess is safe.
"""
from __future__ import annotations

import logging
import os
import threading

import numpy as np

from . import acl_runtime
from .acl_runtime import ACL_SUCCESS, error
from .base import Backend, BackendError

log = logging.getLogger(__name__)

# pyACL exposes no constants module; these are the values in the CANN pyACL API reference and Huawei's samples.
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
NPY_FLOAT32 = 11
MBATCH_INPUT = "ascend_mbatch_shape_data"


class _Slot(object):
    """Everything one batch size needs, made once: device input/output (+ mbatch) memory, the
    host output buffer, data buffers and the two datasets."""

    def __init__(self, batch):
        self.batch = batch
        self.in_dev = self.out_dev = self.out_host = self.mbatch_dev = None
        self.in_size = self.out_size = 0
        self.in_ds = self.out_ds = None
        self.device_ptrs = []
        self.buffers = []


class AclBackend(Backend):
    name = "acl"

    def __init__(self, om_path, info, device_id):
        """om_path: the .om file; info: the bundle's ModelInfo (input shape, num_classes, and the
        `om` record of how the .om was built); device_id: the Ascend device to run on."""
        self.device_id = int(device_id)
        self.om_path = om_path
        self.om = info.om
        self.image_shape = tuple(int(d) for d in info.input.shape[1:])
        self.num_classes = info.num_classes
        self._lock = threading.RLock()
        self._closed = False
        self._broken = None
        self._slots = {}
        self._device_set = False
        self._holds_runtime = False
        self.context = None
        self.model_id = None
        self.desc = None
        self.acl = None
        if not os.path.isfile(om_path):
            raise BackendError("no Ascend model at %s: convert the bundle with ATC (`make om`) on a CANN machine"
                               % om_path, fatal=True)
        if self.om is None:
            raise BackendError("%s has no `om` record in model.json, so it was not built by `mbv3 om` and whether it "
                               "takes uint8 (AIPP) or float32 input is unknown: build it with `mbv3 om --bundle %s` "
                               "(`make om`)" % (om_path, os.path.dirname(om_path)), fatal=True)
        if self.om.input_dtype != ("uint8" if self.om.aipp else "float32"):
            raise BackendError("%s: model.json's om record contradicts itself (aipp=%s, input_dtype=%s): build the "
                               ".om again with `mbv3 om`" % (om_path, self.om.aipp, self.om.input_dtype), fatal=True)
        self.aipp = bool(self.om.aipp)
        self._runtime = acl_runtime.RUNTIME   # the process's pyACL: init once, finalize at exit
        self.acl = self._runtime.acquire()
        self._holds_runtime = True
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # --- loading --------------------------------------------------------------------------------

    def _check(self, call, ret, fatal=None):
        if ret != ACL_SUCCESS:
            raise error(self.acl, call, ret, fatal)

    def _open(self):
        acl = self.acl
        self._check("acl.rt.set_device(%d)" % self.device_id, acl.rt.set_device(self.device_id), fatal=True)
        self._device_set = True
        self.context, ret = acl.rt.create_context(self.device_id)
        self._check("acl.rt.create_context", ret, fatal=True)
        self.model_id, ret = acl.mdl.load_from_file(self.om_path)
        if ret != ACL_SUCCESS:
            self.model_id = None
            raise error(acl, "acl.mdl.load_from_file(%s)" % self.om_path, ret, fatal=True)
        self.desc = acl.mdl.create_desc()
        if not self.desc:
            raise BackendError("acl.mdl.create_desc returned no descriptor", fatal=True)
        self._check("acl.mdl.get_desc", acl.mdl.get_desc(self.desc, self.model_id), fatal=True)
        self._inspect_model()

    def _inspect_model(self):
        acl = self.acl
        num_inputs = acl.mdl.get_num_inputs(self.desc)
        num_outputs = acl.mdl.get_num_outputs(self.desc)
        self.mbatch_index = None
        self.profiles = []
        if num_inputs > 1:
            index, ret = acl.mdl.get_input_index_by_name(self.desc, MBATCH_INPUT)
            if ret == ACL_SUCCESS and index >= 0:
                self.mbatch_index = index
        if self.mbatch_index is not None:
            info, ret = acl.mdl.get_dynamic_batch(self.desc)
            self._check("acl.mdl.get_dynamic_batch", ret, fatal=True)
            self.profiles = sorted(int(b) for b in info["batch"][:info.get("batchCount", len(info["batch"]))])
            if not self.profiles:
                raise BackendError("%s has an %s input but no batch profiles" % (self.om_path, MBATCH_INPUT), fatal=True)
            self.mbatch_size = acl.mdl.get_input_size_by_index(self.desc, self.mbatch_index)
        data_inputs = [i for i in range(num_inputs) if i != self.mbatch_index]
        if len(data_inputs) != 1 or num_outputs != 1:
            raise BackendError("%s has %d data input(s) and %d output(s); expected one image input and one logits output"
                               % (self.om_path, len(data_inputs), num_outputs), fatal=True)
        recorded = self.om.batch_profiles
        if recorded and sorted(recorded) != self.profiles:
            log.warning("%s: model.json records batch profiles %s, the model has %s; using the model's",
                        self.om_path, recorded, self.profiles or "none")
        self.input_index = data_inputs[0]
        self.num_inputs = num_inputs
        in_size = acl.mdl.get_input_size_by_index(self.desc, self.input_index)
        out_size = acl.mdl.get_output_size_by_index(self.desc, 0)

        self.per_image = int(np.prod(self.image_shape)) * (1 if self.aipp else 4)
        self.batch_sizes = self._batch_sizes(in_size, self.per_image)
        if not self.batch_sizes:
            raise BackendError(self._input_contradicts_record(in_size), fatal=True)
        expected_out = self.max_batch * self.num_classes * 4
        if out_size != expected_out:
            raise BackendError("%s: model output is %d bytes, expected %d (float32 logits [%d, %d])" % (
                self.om_path, out_size, expected_out, self.max_batch, self.num_classes), fatal=True)

    def _batch_sizes(self, in_size, per_image):
        """The batch sizes the model's input of `in_size` bytes holds at `per_image` bytes an image
        (its profiles, or its one static batch); [] when it holds no whole number of images."""
        if self.profiles:
            return self.profiles if in_size == self.profiles[-1] * per_image else []
        return [in_size // per_image] if in_size > 0 and in_size % per_image == 0 else []

    def _input_contradicts_record(self, in_size):
        pixels = int(np.prod(self.image_shape))
        shape = "x".join(map(str, self.image_shape))
        recorded, other = ("uint8", "float32") if self.aipp else ("float32", "uint8")
        text = ("%s: model.json records om.aipp=%s (%s input), but the model's input is %d bytes, which is not a batch "
                "of %s %s images" % (self.om_path, self.aipp, recorded, in_size, shape, recorded))
        if self._batch_sizes(in_size, pixels * (4 if self.aipp else 1)):
            text += " (it is a batch of %s images: an .om built %s AIPP)" % (other, "without" if self.aipp else "with")
        return text + ": was the .om built from this bundle? Build it again with `mbv3 om`"

    # --- the Backend interface ------------------------------------------------------------------

    @property
    def max_batch(self):
        return self.batch_sizes[-1]

    @property
    def input_dtype(self):
        return np.uint8 if self.aipp else np.float32

    def describe(self):
        if self.profiles:
            batch = "dynamic batch %s" % ",".join(map(str, self.profiles))
        else:
            batch = "static batch %d" % self.batch_sizes[0]
        return "acl device %d, %s (%s, %s, %s)" % (
            self.device_id, os.path.basename(self.om_path), self.om.soc_version, batch,
            "AIPP: uint8 RGB input" if self.aipp else "float32 input, no AIPP")

    def run(self, batch):
        batch = np.asarray(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.image_shape:
            raise BackendError("batch shape %s does not match the model's [N, %s]"
                               % (list(batch.shape), ", ".join(map(str, self.image_shape))))
        if self.aipp and batch.dtype != np.uint8:
            raise BackendError("this .om normalises inside the model (AIPP): send uint8 RGB, not %s" % batch.dtype)
        with self._lock:
            if self._closed:
                raise BackendError("the acl backend is closed", fatal=True)
            if self._broken:
                raise BackendError("the Ascend device failed earlier (%s); reload the backend" % self._broken, fatal=True)
            self._bind_context()
            data = np.ascontiguousarray(batch, self.input_dtype)
            outputs = []
            for start in range(0, len(data), self.max_batch):
                outputs.append(self._run_chunk(data[start:start + self.max_batch]))
            if not outputs:
                return np.zeros((0, self.num_classes), np.float32)
            return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _bind_context(self):
        """Make our context current on the calling thread (a context is bound to the thread that
        made it; another thread, or another backend's context on this one, needs set_context)."""
        acl = self.acl
        get_context = getattr(acl.rt, "get_context", None)
        if get_context is not None:
            current, ret = get_context()
            if ret == ACL_SUCCESS and current == self.context:
                return
        self._checked_run("acl.rt.set_context", acl.rt.set_context(self.context))

    def _checked_run(self, call, ret):
        if ret != ACL_SUCCESS:
            err = error(self.acl, call, ret)
            if err.fatal:
                self._broken = str(err)
            raise err

    def _run_chunk(self, data):
        acl = self.acl
        n = len(data)
        size = next(b for b in self.batch_sizes if b >= n)
        slot = self._slot(size)
        if n < size:
            padded = np.zeros((size,) + self.image_shape, self.input_dtype)
            padded[:n] = data
            data = padded
        if hasattr(acl.util, "bytes_to_ptr"):  # newer pyACL; `raw` must stay alive until the copy is done
            raw = data.tobytes()
            src, nbytes = acl.util.bytes_to_ptr(raw), len(raw)
        else:  # older pyACL ("to be deprecated")
            data = np.ascontiguousarray(data)
            src, nbytes = acl.util.numpy_to_ptr(data), data.nbytes
        self._checked_run("acl.rt.memcpy", acl.rt.memcpy(slot.in_dev, slot.in_size, src, nbytes,
                                                         ACL_MEMCPY_HOST_TO_DEVICE))
        if self.mbatch_index is not None:
            self._checked_run("acl.mdl.set_dynamic_batch_size",
                              acl.mdl.set_dynamic_batch_size(self.model_id, slot.in_ds, self.mbatch_index, size))
        self._checked_run("acl.mdl.execute", acl.mdl.execute(self.model_id, slot.in_ds, slot.out_ds))
        self._checked_run("acl.rt.memcpy", acl.rt.memcpy(slot.out_host, slot.out_size, slot.out_dev, slot.out_size,
                                                         ACL_MEMCPY_DEVICE_TO_HOST))
        dims, ret = acl.mdl.get_cur_output_dims(self.desc, 0)
        self._checked_run("acl.mdl.get_cur_output_dims", ret)
        got = list(dims["dims"]) if dims else []
        if got != [size, self.num_classes]:
            raise BackendError("the model's current output dims are %s, expected [%d, %d]" % (got, size, self.num_classes))
        if hasattr(acl.util, "ptr_to_bytes"):
            logits = np.frombuffer(acl.util.ptr_to_bytes(slot.out_host, slot.out_size), np.float32)
        else:
            logits = np.array(acl.util.ptr_to_numpy(slot.out_host, (size * self.num_classes,), NPY_FLOAT32))
        return logits.reshape(size, self.num_classes)[:n].copy()

    def _slot(self, size):
        slot = self._slots.get(size)
        if slot is not None:
            return slot
        slot = _Slot(size)
        try:
            self._build_slot(slot)
        except BaseException:
            errors = []
            self._release_slot(slot, errors)
            for message in errors:
                log.warning("acl backend: releasing a half-made batch-%d slot: %s", size, message)
            raise
        self._slots[size] = slot
        return slot

    def _build_slot(self, slot):
        acl = self.acl
        slot.in_size = slot.batch * self.per_image
        slot.out_size = slot.batch * self.num_classes * 4
        slot.in_dev = self._malloc(slot, slot.in_size)
        slot.out_dev = self._malloc(slot, slot.out_size)
        if self.mbatch_index is not None:
            slot.mbatch_dev = self._malloc(slot, self.mbatch_size)
        ptr, ret = acl.rt.malloc_host(slot.out_size)
        self._checked_run("acl.rt.malloc_host(%d)" % slot.out_size, ret)
        slot.out_host = ptr
        slot.in_ds = self._dataset()
        inputs = {self.input_index: (slot.in_dev, slot.in_size)}
        if self.mbatch_index is not None:
            inputs[self.mbatch_index] = (slot.mbatch_dev, self.mbatch_size)
        for index in range(self.num_inputs):  # buffer i of the dataset is model input i
            self._add_buffer(slot, slot.in_ds, *inputs[index])
        slot.out_ds = self._dataset()
        self._add_buffer(slot, slot.out_ds, slot.out_dev, slot.out_size)

    def _malloc(self, slot, size):
        ptr, ret = self.acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
        self._checked_run("acl.rt.malloc(%d)" % size, ret)
        slot.device_ptrs.append(ptr)
        return ptr

    def _dataset(self):
        ds = self.acl.mdl.create_dataset()
        if not ds:
            raise BackendError("acl.mdl.create_dataset returned no dataset")
        return ds

    def _add_buffer(self, slot, dataset, ptr, size):
        buf = self.acl.create_data_buffer(ptr, size)
        if not buf:
            raise BackendError("acl.create_data_buffer returned no buffer")
        slot.buffers.append(buf)
        _, ret = self.acl.mdl.add_dataset_buffer(dataset, buf)
        self._checked_run("acl.mdl.add_dataset_buffer", ret)

    def _step(self, errors, call, fn, *args):
        """One teardown call: failures are collected, never raised."""
        try:
            ret = fn(*args)
        except Exception as e:
            errors.append("%s raised %s" % (call, e))
            return
        if ret != ACL_SUCCESS:
            errors.append(str(error(self.acl, call, ret)))

    def _release_slot(self, slot, errors):
        """Data buffers, datasets, device memory, host memory -- the documented order."""
        acl = self.acl
        destroyed = set()
        for ds in (slot.in_ds, slot.out_ds):
            if not ds:
                continue
            for i in range(acl.mdl.get_dataset_num_buffers(ds)):
                buf = acl.mdl.get_dataset_buffer(ds, i)
                if buf and buf not in destroyed:
                    destroyed.add(buf)
                    self._step(errors, "acl.destroy_data_buffer", acl.destroy_data_buffer, buf)
        for buf in slot.buffers:  # made but not (yet) in a dataset
            if buf not in destroyed:
                destroyed.add(buf)
                self._step(errors, "acl.destroy_data_buffer", acl.destroy_data_buffer, buf)
        for ds in (slot.in_ds, slot.out_ds):
            if ds:
                self._step(errors, "acl.mdl.destroy_dataset", acl.mdl.destroy_dataset, ds)
        for ptr in slot.device_ptrs:
            self._step(errors, "acl.rt.free", acl.rt.free, ptr)
        if slot.out_host:
            self._step(errors, "acl.rt.free_host", acl.rt.free_host, slot.out_host)
        slot.in_ds = slot.out_ds = slot.out_host = None
        slot.device_ptrs, slot.buffers = [], []

    # --- teardown -------------------------------------------------------------------------------

    def close(self):
        """The documented teardown: data buffers, datasets, device/host memory, model, desc,
        context, device; then release the process's pyACL runtime (acl.finalize follows at exit, or
        acl_runtime.finalize_runtime()). Errors are logged and kept in self.close_errors; close
        never raises and is safe to call twice, from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            errors = self.close_errors = []
            acl = self.acl
            if acl is None:
                return
            step = self._step
            if self.context is not None:
                get_context = getattr(acl.rt, "get_context", None)
                current, ret = get_context() if get_context is not None else (None, -1)
                if ret != ACL_SUCCESS or current != self.context:
                    step(errors, "acl.rt.set_context", acl.rt.set_context, self.context)
            for slot in self._slots.values():
                self._release_slot(slot, errors)
            self._slots = {}
            if self.model_id is not None:
                step(errors, "acl.mdl.unload", acl.mdl.unload, self.model_id)
                self.model_id = None
            if self.desc:
                step(errors, "acl.mdl.destroy_desc", acl.mdl.destroy_desc, self.desc)
                self.desc = None
            if self.context is not None:
                step(errors, "acl.rt.destroy_context", acl.rt.destroy_context, self.context)
                self.context = None
            if self._device_set:
                step(errors, "acl.rt.reset_device(%d)" % self.device_id, acl.rt.reset_device, self.device_id)
                self._device_set = False
            if self._holds_runtime:
                self._runtime.release()
                self._holds_runtime = False
            for message in errors:
                log.warning("acl backend close: %s", message)
