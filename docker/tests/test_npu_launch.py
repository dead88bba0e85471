"""docker/npu-launch.sh, run here with a stand-in for `mbv3` that records the rank environment it was
started with (no CANN, no cards): the ranks and cards of an eight-card compose run, the rank table it
writes from hccn_tool's answers, the ranks it takes from HCCL-Controller's table on Kubernetes, and
that one failing rank or a SIGTERM stops every rank so each can save."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mbv3 import ranktable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(ROOT, "docker", "npu-launch.sh")

FAKE_MBV3 = """#!/bin/bash
out="$OUT_DIR/rank$RANK_ID"
echo "$RANK_SIZE $RANK_ID $ASCEND_DEVICE_ID $*" > "$out.env"
if [ "${FAIL_RANK:-x}" = "$RANK_ID" ]; then   # fails once the others are running
    while [ "$(ls "$OUT_DIR" | grep -c started)" -lt $((RANK_SIZE - 1)) ]; do sleep 0.1; done
    exit 3
fi
if [ -z "${HOLD:-}" ]; then exit 0; fi
trap 'kill $s; echo saved > "$out.saved"; exit 0' TERM
sleep 30 &
s=$!
touch "$out.started"
wait
"""
# `hccn_tool -i N -ip -g` as the driver's tool answers
FAKE_HCCN_TOOL = """#!/bin/sh
printf 'ipaddr:192.168.10%s.100\\nnetmask:255.255.255.0\\n' "$2"
"""


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("mbv3", FAKE_MBV3), ("hccn_tool", FAKE_HCCN_TOOL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RANK_", "ASCEND_", "LOCAL_"))}
    return dict(keep, PATH="%s:%s" % (bin_dir, os.environ["PATH"]), OUT_DIR=str(out), MBV3_PYTHON=sys.executable,
                PYTHONPATH=os.path.join(ROOT, "model"))


def launch(env, *args, timeout=60, **extra):
    return subprocess.run(["bash", LAUNCH, "mbv3"] + list(args), env=dict(env, **extra), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)


def ranks(env):
    out = env["OUT_DIR"]
    return sorted(open(os.path.join(out, f)).read().split() for f in os.listdir(out) if f.endswith(".env"))


def test_other_commands_and_one_card_run_as_they_are(env):
    result = launch(env, "om", "--help")
    assert result.returncode == 0 and ranks(env) == [["om", "--help"]]   # no RANK_* at all
    assert launch(env, "train", RANK_SIZE="1").returncode == 0


def test_eight_cards_are_eight_ranks_on_the_cards_from_first_device(env, tmp_path):
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    result = launch(env, "train", "--config", "x", RANK_SIZE="8", RANK_TABLE_FILE=str(table), FIRST_DEVICE="0")
    assert result.returncode == 0, result.stderr
    got = ranks(env)
    assert [r[:3] for r in got] == sorted(["8", str(i), str(i)] for i in range(8))
    assert all(r[3:] == ["train", "--config", "x"] for r in got)


def test_a_missing_rank_table_is_written_from_hccn_tool_first(env, tmp_path):
    table = tmp_path / "runs" / "rank_table.json"
    table.parent.mkdir()
    result = launch(env, "train", RANK_SIZE="4", RANK_TABLE_FILE=str(table), FIRST_DEVICE="4", SERVER_ID="10.0.0.7")
    assert result.returncode == 0, result.stderr
    written = json.loads(table.read_text())
    (server,) = written["server_list"]
    assert server["server_id"] == "10.0.0.7"
    assert [(d["device_id"], d["device_ip"], d["rank_id"]) for d in server["device"]] == [
        (str(4 + i), "192.168.10%d.100" % (4 + i), str(i)) for i in range(4)]
    assert [r[:3] for r in ranks(env)] == [["4", str(i), str(4 + i)] for i in range(4)]
    assert launch(env, "train", RANK_SIZE="4").returncode == 2   # no table named at all


def test_on_kubernetes_the_ranks_come_from_hccl_controllers_table(env, tmp_path):
    table = tmp_path / "hccl.json"
    table.write_text(json.dumps({"version": "1.0", "status": "completed", "server_count": "2", "server_list": [
        {"server_id": "10.0.0.7", "device": [{"device_id": str(d), "device_ip": "a", "rank_id": str(d)}
                                             for d in (0, 1)]},
        {"server_id": "10.0.0.8", "device": [{"device_id": str(d), "device_ip": "b", "rank_id": str(d - 4)}
                                             for d in (6, 7)]}]}))
    result = launch(env, "train", RANK_TABLE_FILE=str(table), RANK_TABLE_WAIT="5", SERVER_ID="10.0.0.8")
    assert result.returncode == 0, result.stderr
    assert [r[:3] for r in ranks(env)] == [["4", "2", "0"], ["4", "3", "1"]]
    table.write_text('{"status": "initializing"}')
    waiting = launch(env, "train", RANK_TABLE_FILE=str(table), RANK_TABLE_WAIT="0", SERVER_ID="10.0.0.8")
    assert waiting.returncode != 0 and "initializing" in waiting.stderr


def test_one_failing_rank_stops_the_others_which_save(env, tmp_path):
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    started = time.monotonic()
    result = launch(env, "train", RANK_SIZE="4", RANK_TABLE_FILE=str(table), FAIL_RANK="2", HOLD="1", timeout=25)
    assert result.returncode == 3 and time.monotonic() - started < 20, result.stderr
    assert "stopping the others" in result.stderr
    assert sorted(f for f in os.listdir(env["OUT_DIR"]) if f.endswith(".saved")) == [
        "rank0.saved", "rank1.saved", "rank3.saved"]


def test_sigterm_reaches_every_rank(env, tmp_path):
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    proc = subprocess.Popen(["bash", LAUNCH, "mbv3", "train"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(env, RANK_SIZE="3", RANK_TABLE_FILE=str(table), HOLD="1"))
    try:
        deadline = time.monotonic() + 20
        while len([f for f in os.listdir(env["OUT_DIR"]) if f.endswith(".started")]) < 3:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert len([f for f in os.listdir(env["OUT_DIR"]) if f.endswith(".saved")]) == 3


def test_cpu_binding_gives_each_rank_its_share_of_the_cpus(env, tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one CPU: nothing to share")
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    recorder = tmp_path / "bin" / "mbv3"   # records the CPUs it may run on instead
    recorder.write_text('#!/bin/bash\ngrep Cpus_allowed_list /proc/self/status | cut -f2 > "$OUT_DIR/rank$RANK_ID.cpus"\n')
    result = launch(env, "train", RANK_SIZE="2", RANK_TABLE_FILE=str(table), NPU_CPU_BIND="1")
    assert result.returncode == 0, result.stderr
    got = [open(os.path.join(env["OUT_DIR"], "rank%d.cpus" % rank)).read().strip() for rank in (0, 1)]
    assert got == [ranktable.cpu_ranges(2, rank) for rank in (0, 1)]   # the kernel's list format is taskset's
    assert got[0] != got[1]
