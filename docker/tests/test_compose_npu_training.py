"""The NPU fine-tune service as `docker-compose config` renders it (no engine, no card), alone and with
the eight-card override: shared memory, the grace period the ranks need to save, the host paths
Huawei's run commands mount, and the rank table npu-launch writes when none exists."""
import os

from test_compose_devices import compose_config

EIGHT = "docker/compose.npu-8p.yaml"


def finetune(*files, env=None):
    return compose_config(*files, env=env, profile="train", service="finetune-npu")


def seconds(duration):   # compose renders 120s as "2m0s"
    minutes, _, rest = duration.partition("m") if "m" in duration else ("0", "", duration)
    return int(minutes) * 60 + int(rest.rstrip("s") or 0)


def test_the_ranks_have_shared_memory_and_a_minute_or_more_to_save():
    one, eight = finetune(), finetune(EIGHT)
    assert seconds(one["stop_grace_period"]) >= 60 and seconds(eight["stop_grace_period"]) >= 60
    assert int(one["shm_size"]) >= 8 * 1024 ** 3
    assert int(eight["shm_size"]) >= 4 * int(one["shm_size"])
    assert "ipc" not in one   # one container, one IPC namespace: the host's is not shared
    assert seconds(finetune(env={"FINETUNE_NPU_STOP_GRACE": "300s"})["stop_grace_period"]) == 300


def test_the_host_paths_of_huaweis_run_commands_are_mounted_read_only():
    volumes = {v["target"]: v for v in finetune()["volumes"]}
    for path in ("/usr/local/Ascend/driver", "/usr/local/Ascend/add-ons", "/usr/local/dcmi", "/usr/local/sbin",
                 "/etc/ascend_install.info"):
        assert volumes[path]["source"] == path and volumes[path]["read_only"], path
    # a file: never created as a directory on a host that lacks it
    assert volumes["/etc/ascend_install.info"]["bind"]["create_host_path"] is False
    assert "/usr/local/bin/npu-smi" not in volumes   # a file bind where newer drivers have none


def test_eight_cards_get_a_rank_table_path_under_runs_and_the_cards_addresses():
    service = finetune(EIGHT)
    env = service["environment"]
    assert env["RANK_SIZE"] == "8" and env["RANK_TABLE_FILE"] == "/runs/rank_table.json"
    assert os.path.dirname(env["RANK_TABLE_FILE"]) in {v["target"] for v in service["volumes"]}
    volumes = {v["target"]: v for v in service["volumes"]}
    assert volumes["/etc/hccn.conf"]["read_only"] and volumes["/etc/hccn.conf"]["bind"]["create_host_path"] is False
    assert "/usr/local/Ascend/add-ons" in volumes   # the base file's mounts stay
    assert finetune(EIGHT, env={"RANK_TABLE_FILE": "/runs/t.json"})["environment"]["RANK_TABLE_FILE"] == "/runs/t.json"
    assert finetune(EIGHT, env={"SERVER_ID": "10.0.0.7"})["environment"]["SERVER_ID"] == "10.0.0.7"
