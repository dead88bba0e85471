"""The training manifests, checked offline with test_manifests.py's machinery (kubectl's kustomize,
Kubernetes' schemas, the CRD schemas in deploy/tests/crds): the Ascend 910 fine-tune as the Volcano Job
HCCL-Controller serves (deploy/npu-training), with each pod's processes given their ranks and cards by
the image's launcher from a table like the one the controller writes, and the GPU workers' Job failing
as a whole. What only a cluster shows (Volcano's scheduling, the device plugin's annotations,
HCCL-Controller filling the ConfigMap, TensorFlow ending the surviving workers) is not here."""
import json
import os
import stat
import subprocess
import sys

import kubernetes_validate
import pytest
from test_manifests import K8S_VERSIONS, ROOT, compose_services, container, crd_errors, env_of, one, render

NPU = "npu-training"
HUAWEI_LABEL = {"ring-controller.atlas": "ascend-910"}
RANK_TABLE_DIR = "/user/serverid/devindex/config"   # where HCCL-Controller's ConfigMap is read
CARDS = "huawei.com/Ascend910"


def job():
    return one(NPU, "Job")


def task():
    (t,) = job()["spec"]["tasks"]
    return t


def pod_spec():
    return task()["template"]["spec"]


def train_container():
    (c,) = pod_spec()["containers"]
    return c


def test_the_npu_job_renders_as_a_volcano_job_and_its_rank_table_configmap():
    assert sorted((o["apiVersion"], o["kind"]) for o in render(NPU)) == [
        ("batch.volcano.sh/v1alpha1", "Job"), ("v1", "ConfigMap")]


def test_the_volcano_job_validates_against_volcanos_crd():
    assert crd_errors(job()) == []


def test_volcano_validation_can_fail():
    bad = job()
    bad["spec"]["minAvaliable"] = bad["spec"].pop("minAvailable")
    bad["spec"]["policies"][0]["action"] = 3
    errors = crd_errors(bad)
    assert any("minAvaliable" in e for e in errors) and any("policies/0/action" in e for e in errors)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_configmap_and_the_pod_validate_against_kubernetes_schemas(version):
    kubernetes_validate.validate(one(NPU, "ConfigMap"), version, strict=True)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": dict(task()["template"]["metadata"], name="x"),
           "spec": pod_spec()}
    kubernetes_validate.validate(pod, version, strict=True)


def test_hccl_controller_finds_the_job_its_pods_and_its_configmap():
    """Ascend/ascend-hccl-controller README: label ring-controller.atlas: ascend-910 on job, pods and
    ConfigMap; the job's ConfigMap is the one its volume ascend-910-config names, rings-config-<job>,
    holding hccl.json, mounted at /user/serverid/devindex/config."""
    config = one(NPU, "ConfigMap")
    name = job()["metadata"]["name"]
    for labels in (job()["metadata"]["labels"], task()["template"]["metadata"]["labels"], config["metadata"]["labels"]):
        assert HUAWEI_LABEL.items() <= labels.items()
    assert config["metadata"]["name"] == "rings-config-" + name
    assert json.loads(config["data"]["hccl.json"]) == {"status": "initializing"}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert volumes["ascend-910-config"]["configMap"]["name"] == config["metadata"]["name"]
    mounts = {m["name"]: m for m in train_container()["volumeMounts"]}
    assert mounts["ascend-910-config"]["mountPath"] == RANK_TABLE_DIR
    env = env_of(train_container())
    assert env["RANK_TABLE_FILE"] == RANK_TABLE_DIR + "/hccl.json"


def test_volcano_gangs_the_pods_and_restarts_them_all_when_one_fails():
    spec = job()["spec"]
    assert spec["schedulerName"] == "volcano" and spec["minAvailable"] == task()["replicas"] >= 1
    assert {(p["event"], p["action"]) for p in spec["policies"]} == {("PodFailed", "RestartJob"),
                                                                      ("PodEvicted", "RestartJob")}
    assert spec["maxRetry"] >= 1 and pod_spec()["restartPolicy"] == "Never"
    assert pod_spec()["terminationGracePeriodSeconds"] >= 60   # every rank saves first
    anti = pod_spec()["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"    # one pod per server: server_id is the node's IP
    assert anti["labelSelector"]["matchLabels"].items() <= task()["template"]["metadata"]["labels"].items()


def test_each_pod_asks_for_a_servers_cards_and_hands_them_to_the_runtime():
    c = train_container()
    assert c["resources"]["requests"][CARDS] == c["resources"]["limits"][CARDS] == "8"
    by_name = {e["name"]: e for e in c["env"]}
    assert by_name["SERVER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert by_name["ASCEND_VISIBLE_DEVICES"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['%s']" % CARDS
    assert pod_spec()["nodeSelector"] == {"accelerator-type": "module"}   # an Atlas 800 training server


def test_the_pod_runs_what_compose_runs_through_the_images_launcher():
    c = train_container()
    finetune = compose_services()["finetune-npu"]
    assert c["image"] == finetune["image"]
    assert c["args"] == finetune["command"]
    assert "command" not in c   # the image's entrypoint, ascend-entrypoint then npu-launch, stays
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in pod_spec()["volumes"]}
    assert claims[mounts["/data"]["name"]]["claimName"] == "mbv3-data" and mounts["/data"]["readOnly"]
    assert claims[mounts["/runs"]["name"]]["claimName"] == "mbv3-runs"
    assert "/dev/shm" in mounts and mounts["/usr/local/Ascend/driver"]["readOnly"]


FAKE_MBV3 = '#!/bin/sh\necho "$RANK_TABLE_FILE $RANK_SIZE $RANK_ID $ASCEND_DEVICE_ID $*" > "$OUT/rank$RANK_ID"\n'


def controller_table(cards_per_pod, pods):
    """hccl.json as HCCL-Controller's v2 rank table writes it (pkg/ring-controller/ranktable/v2): one
    server per pod, server_id the node's IP, rank_id pod index x cards + position; the second pod was
    given the host's cards 4.. to show that cards inside a pod count from 0."""
    servers = []
    for p in range(pods):
        first = 4 * p
        servers.append({"server_id": "10.0.0.%d" % (7 + p), "device": [
            {"device_id": str(first + i), "device_ip": "192.168.%d.%d" % (100 + i, p), "rank_id": str(p * cards_per_pod + i)}
            for i in range(cards_per_pod)]})
    return {"status": "completed", "version": "1.0", "server_count": str(pods), "server_list": servers}


def test_each_process_gets_rank_table_file_rank_id_and_ascend_device_id(tmp_path):
    """The pod's environment as Kubernetes gives it (SERVER_ID from status.hostIP), the image's launcher,
    and a completed table for two pods of 4 cards: the second pod's processes are ranks 4-7 on cards 0-3."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mbv3").write_text(FAKE_MBV3)
    (bin_dir / "mbv3").chmod(0o755 | stat.S_IEXEC)
    out = tmp_path / "out"
    out.mkdir()
    env = env_of(train_container())
    table = tmp_path / os.path.basename(env["RANK_TABLE_FILE"])   # the ConfigMap's key, in a directory of ours
    table.write_text(json.dumps(controller_table(4, 2)))
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK_", "ASCEND_", "LOCAL_"))}
    run_env.update({k: v for k, v in env.items() if v is not None})
    run_env.update(RANK_TABLE_FILE=str(table), SERVER_ID="10.0.0.8", OUT=str(out), MBV3_PYTHON=sys.executable,
                   PYTHONPATH=os.path.join(ROOT, "model"), PATH="%s:%s" % (bin_dir, os.environ["PATH"]))
    result = subprocess.run(["bash", os.path.join(ROOT, "docker", "npu-launch.sh"), "mbv3"] + train_container()["args"],
                            env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = sorted((out / name).read_text().split(" ", 4) for name in os.listdir(str(out)))
    assert [line[:4] for line in lines] == [[str(table), "8", str(4 + i), str(i)] for i in range(4)]
    assert all(line[4].strip() == " ".join(train_container()["args"]) for line in lines)
    assert int(env["RANK_TABLE_WAIT"]) >= 60


# --- the GPU/CPU workers (deploy/training) ----------------------------------------------------------

def test_the_gpu_workers_job_fails_as_a_whole_and_is_retried_whole():
    spec = one("training", "Job")["spec"]
    workers = int(env_of(container("training", "Job"))["WORKERS"])
    assert spec["template"]["spec"]["restartPolicy"] == "Never"   # podFailurePolicy requires it
    assert spec["backoffLimit"] >= 2 * workers    # one incident fails every worker: at least two whole retries
    rules = spec["podFailurePolicy"]["rules"]
    assert rules == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]


def test_the_hwhiaiuser_gid_is_a_parameter(tmp_path):
    """As for the Ascend overlays: the nodes' HwHiAiUser gid comes from npu-training/params.env, and the
    ConfigMap that carries it is never applied."""
    import shutil

    import yaml
    copy_root = tmp_path / "deploy"
    shutil.copytree(os.path.join(ROOT, "deploy"), str(copy_root), ignore=shutil.ignore_patterns("tests"))
    params = copy_root / "npu-training" / "params.env"
    assert params.read_text().strip() == "HWHIAIUSER_GID=1000"
    assert pod_spec()["securityContext"]["supplementalGroups"] == [1000]
    params.write_text("HWHIAIUSER_GID=1234\n")
    from test_manifests import KUBECTL
    result = subprocess.run([KUBECTL, "kustomize", str(copy_root / "npu-training")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"] == ["rings-config-mbv3-finetune-npu"]
    (volcano_job,) = [o for o in objects if o["kind"] == "Job"]
    assert volcano_job["spec"]["tasks"][0]["template"]["spec"]["securityContext"]["supplementalGroups"] == [1234]
