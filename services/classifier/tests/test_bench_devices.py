"""`make bench-devices` (benchmarks/device_scaling.py), shrunk: a real service on the pyACL simulator
with 1 and then 2 devices, 8 clients; every request answered, the service stopped cleanly each time,
the images counted on every device, and the 2-over-1 ratio written. It broke once without anyone
noticing (a client thread that died on the request list counted as no requests, not as errors)."""
import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "device_scaling.py")


def test_one_and_two_simulated_devices(tmp_path):
    out = tmp_path / "devices.json"
    done = subprocess.run([sys.executable, SCRIPT, "--bundle", str(tmp_path / "bundle"), "--devices", "1", "2",
                           "--clients", "8", "--device-ms", "50", "--requests", "80", "--seconds", "10",
                           "--json", str(out), "--plot", str(tmp_path / "devices.png")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    levels = {lvl["devices"]: lvl for lvl in result["levels"]}
    assert sorted(levels) == [1, 2]
    for n, lvl in levels.items():
        assert lvl["requests"] == 80 and lvl["errors"] == 0
        assert lvl["exit_status"] == 0 and not lvl["killed"]
        assert len(lvl["images_per_device"]) == n and all(v > 0 for v in lvl["images_per_device"].values())
        assert sum(lvl["images_per_device"].values()) == 80
    assert result["ratios"]["2_over_1"] > 1.0
    assert (tmp_path / "devices.png").stat().st_size > 0
    assert "throughput on 2 devices / on 1" in done.stdout
