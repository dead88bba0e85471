"""Strategies, run in fresh processes (logical devices and cluster strategies must be set up before
TensorFlow initialises) on tests/fixed_data.py, whose duplicated batches make one device with
global batch 32 and two replicas with 16 each see identical batch-norm inputs."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mbv3 import checkpoint

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "train_fixed.py")
COMMON = ["train.batch_size=32", "train.learning_rate=0.02", "data.image_size=64"]


def _run(model_dir, *overrides, **kwargs):
    env = dict(os.environ, PER_REPLICA_BATCH="16", **kwargs.pop("env", {}))
    return subprocess.Popen([sys.executable, SCRIPT, str(model_dir)] + COMMON + list(overrides), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def _result(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_mirrored_over_two_cpus_matches_one_device(tmp_path):
    one = _result(_run(tmp_path / "one", "train.steps=6", "target.cpu_replicas=1"))
    two = _result(_run(tmp_path / "two", "train.steps=6", "target.cpu_replicas=2"))
    a = np.array([t["loss"] for t in one["trajectory"]])
    b = np.array([t["loss"] for t in two["trajectory"]])
    assert len(a) == len(b) == 6
    # Measured: the first three steps agree to 4 decimals. Summing replica gradients wrongly (a mean,
    # i.e. half the gradient) moves step 2 by 2.2% and step 3 by 6.7%, so 0.5% separates right from wrong.
    # Later steps drift by float reduction order amplified through batch norm; bounded loosely.
    np.testing.assert_allclose(b[:3], a[:3], rtol=5e-3)
    np.testing.assert_allclose(b, a, rtol=0.15)
    assert two["summary"]["step"] == 6


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_multi_worker_processes_train_in_step(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": ["127.0.0.1:%d" % p for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_run(tmp_path / "run", "train.steps=4", env={"TF_CONFIG": tf_config}))
    results = [_result(p, timeout=400) for p in procs]
    for r in results:
        assert [t["step"] for t in r["trajectory"]] == [1, 2, 3, 4]
    # synchronised: every worker logged the same (all-reduced) losses
    np.testing.assert_allclose([t["loss"] for t in results[0]["trajectory"]],
                               [t["loss"] for t in results[1]["trajectory"]], rtol=1e-5)
    assert results[0]["summary"]["checkpoint"].endswith("model.ckpt-4")   # the chief writes
    assert results[1]["summary"]["checkpoint"] is None
    assert checkpoint.Reader(str(tmp_path / "run")).step == 4


@pytest.mark.parametrize("overrides", [
    ["target.precision=mixed_float16", "target.xla=true", "target.steps_per_loop=3"],
    ["target.precision=mixed_bfloat16"],
])
def test_precision_and_xla_options_train(tmp_path, overrides):
    result = _result(_run(tmp_path / "run", "train.steps=6", *overrides))
    losses = [t["loss"] for t in result["trajectory"]]
    assert len(losses) == 6 and all(np.isfinite(losses))
    reader = checkpoint.Reader(str(tmp_path / "run"))
    assert reader.step == 6
    if "target.precision=mixed_float16" in overrides:
        assert "train/loss_scale" in reader.shapes
    # weights stay float32 whatever the compute precision
    assert reader._reader.get_variable_to_dtype_map()["MobilenetV3/Conv/weights"].name == "float32"
