"""STAND-IN for CANN's TF 2.x adapter module `npu_device`, installed by the cann-tf stand-in image.

The module is mbv3's recording test double (fake_npu_device.FakeNpuDevice, copied beside this file),
as strict as the adapter where its sources say how (option names and values, RANK_TABLE_FILE and
RANK_ID); NPU_SIM_ADAPTER picks the adapter it plays (tf2.6, the default, or current) and
NPU_SIM_INF_NAN=1 puts a current one in INF_NAN mode. With NPU_SIM_REPORT=path it writes the adapter
calls it saw at exit ("{rank}" in the path becomes RANK_ID, one report per card process), so a test
outside the container can check that `mbv3 train` with target npu went through the adapter (open,
broadcast, loop size, all_reduce).
It proves the image's entrypoint puts the adapter on the path and the target drives it; it cannot
prove the real adapter accepts the graph, nor anything about HCCL or loop sinking on a 910.
"""
import atexit
import json
import os
import sys

from fake_npu_device import FakeNpuDevice

_device = FakeNpuDevice(adapter=os.environ.get("NPU_SIM_ADAPTER", "tf2.6"), inf_nan=os.environ.get("NPU_SIM_INF_NAN") == "1")


def _report():
    path = os.environ.get("NPU_SIM_REPORT", "").replace("{rank}", os.environ.get("RANK_ID", "0"))
    if path:
        with open(path, "w") as f:
            json.dump({"calls": [[str(a) for a in call] for call in _device.recorder.calls]}, f)


atexit.register(_report)
sys.modules[__name__] = _device
