"""`make bench-ab` (benchmarks/ab_settings.py) on a small bundle: two real services side by side,
a few alternating rounds at 1 and 2 clients; the JSON it writes holds both sides and the ratios, and
a setting that breaks B's start-up is an error, not a result."""
import json
import os
import subprocess
import sys

from svc_support import bundle_dir  # noqa: F401

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "ab_settings.py")


def run(bundle, out, *settings):
    return subprocess.run([sys.executable, SCRIPT, *settings, "--bundle", str(bundle), "--rounds", "4",
                           "--per-round", "3", "--clients", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)


def test_two_services_side_by_side(bundle_dir, tmp_path):  # noqa: F811
    out = tmp_path / "ab.json"
    done = run(bundle_dir, out, "ONE_HOP_MAX_PIXELS=0")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["a"] == {} and result["b"] == {"ONE_HOP_MAX_PIXELS": "0"}
    one, many = result["one_client_p50_ms"], result["many_clients_rps"]
    assert one["rounds"] == 4 and many["rounds"] == 2 and result["many_clients"] == 2
    for r in (one, many):
        assert r["a"] > 0 and r["b"] > 0
        assert r["range"][0] <= r["b_over_a"] <= r["range"][1]
    assert "B/A" in done.stdout and "ONE_HOP_MAX_PIXELS=0" in done.stdout


def test_a_b_that_cannot_start_is_an_error(bundle_dir, tmp_path):  # noqa: F811
    done = run(bundle_dir, tmp_path / "ab.json", "MAX_BATCH=0")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "MAX_BATCH must be at least 1" in done.stderr, done.stderr[-3000:]   # all of it: A's log tail if A failed
    assert not (tmp_path / "ab.json").exists()
