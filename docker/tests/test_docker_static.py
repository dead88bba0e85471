"""The Dockerfiles and compose.yaml, checked without a Docker engine: hadolint, `docker-compose
config` for every profile, and the properties the images promise (dependencies before code,
non-root services with a readiness healthcheck, devices and mounts), and that the requirement
ranges the Ascend and training images install resolve on the Pythons of their real base images
(which the stand-ins in test_containers.py, all Python 3.11, cannot show)."""
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
DOCKERFILES = ["infer-cpu", "infer-ascend", "convert-ascend", "train-gpu", "train-npu"]
SERVICES = {"infer-cpu", "infer-ascend"}


def _tool(name):
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


def _dockerfile(name):
    return os.path.join(ROOT, "docker", "%s.Dockerfile" % name)


def _compose(*args):
    result = subprocess.run([_tool("docker-compose")] + list(args), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_reports_no_errors(name):
    result = subprocess.run([_tool("hadolint"), "--failure-threshold", "error", _dockerfile(name)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0, result.stdout


def test_hadolint_check_can_fail(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:3.11-slim\nCOPY a b /app\n")   # DL3021, an error
    assert subprocess.run([_tool("hadolint"), "--failure-threshold", "error", str(bad)],
                          stdout=subprocess.PIPE).returncode != 0


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dependencies_install_before_the_code_is_copied(name):
    lines = open(_dockerfile(name)).read().splitlines()
    first_pip = min(i for i, l in enumerate(lines) if "pip install" in l)
    first_code = min(i for i, l in enumerate(lines) if l.startswith("COPY model/mbv3"))
    assert first_pip < first_code
    assert re.search(r"^ARG BASE_IMAGE=\S+", "\n".join(lines), re.M)
    assert "org.opencontainers.image.title" in "\n".join(lines)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_image_runs_as_uid_10001_by_default(name):
    text = open(_dockerfile(name)).read()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] == "10001"
    assert re.search(r"useradd [^\n]*--uid 10001", text.replace("\\\n", " "))


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_images_have_a_readiness_check(name):
    text = open(_dockerfile(name)).read()
    assert re.search(r"^HEALTHCHECK .*\n.*/readyz", text, re.M)
    assert "tensorflow" not in re.sub(r"#.*", "", text).lower()   # no TensorFlow installed (comments aside)


def test_service_requirements_have_no_tensorflow():
    for name in ("service-base.txt", "service.txt", "service-ascend.txt"):
        text = open(os.path.join(ROOT, "requirements", name)).read().lower()
        assert "tensorflow" not in re.sub(r"#.*", "", text)
    for name in ("service-base.txt", "service-ascend.txt"):
        assert "onnxruntime" not in re.sub(r"#.*", "", open(os.path.join(ROOT, "requirements", name)).read())


def _resolve(requirements, python, arch):
    """What pip would install from `requirements` for CPython `python` on manylinux `arch` (binary
    wheels only, as in a slim image without compilers), without installing anything."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        platforms = [a for tag in ("manylinux2014", "manylinux_2_17", "manylinux_2_28")
                     for a in ("--platform", "%s_%s" % (tag, arch))]
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                                 "--python-version", python, "--implementation", "cp", "--only-binary=:all:"]
                                + platforms + ["--target", os.path.join(tmp, "t"), "--report", report,
                                               "-r", os.path.join(ROOT, "requirements", requirements)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
        assert result.returncode == 0, "%s on CPython %s/%s:\n%s" % (requirements, python, arch, result.stdout[-3000:])
        with open(report) as f:
            return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in json.load(f)["install"]}


# The default infer base (ascendai/cann ...-py3.10) has 3.10; other CANN releases ship 3.8 to 3.11,
# on x86_64 and aarch64 (Kunpeng) hosts. The TF 2.6.5 CANN image has 3.7, the TF GPU image 3.11.
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("requirements,python", [("service-ascend.txt", v) for v in ("3.8", "3.9", "3.10", "3.11")]
                         + [("train-image.txt", v) for v in ("3.7", "3.11")])
def test_image_requirements_resolve_on_the_base_images_python(requirements, python, arch):
    resolved = _resolve(requirements, python, arch)
    if requirements == "service-ascend.txt":
        assert {"fastapi", "uvicorn", "numpy", "pillow", "python-multipart", "prometheus-client",
                "fastapi-offline"} <= set(resolved)
        assert int(resolved["numpy"].split(".")[0]) == 1   # CANN's extensions are built against numpy 1.x


def test_the_resolve_check_can_fail():
    with pytest.raises(AssertionError, match="service-base.txt on CPython 3.10"):
        _resolve("service-base.txt", "3.10", "x86_64")   # its pins (fastapi 0.165, numpy 2.4) need 3.11


@pytest.mark.parametrize("name,requirements", [("infer-ascend", "service-ascend.txt"), ("train-gpu", "train-image.txt"),
                                               ("train-npu", "train-image.txt")])
def test_images_on_foreign_bases_install_the_ranges_file(name, requirements):
    assert "-r /app/requirements/%s" % requirements in open(_dockerfile(name)).read()


@pytest.mark.parametrize("profiles", [[], ["ascend"], ["train"], ["convert"], ["ascend", "train"]])
def test_compose_config_is_valid_for_every_profile(profiles):
    args = [a for p in profiles for a in ("--profile", p)]
    _compose(*(args + ["config", "-q"]))


def test_bare_up_starts_only_the_cpu_service():
    assert _compose("config", "--services").split() == ["infer-cpu"]


def test_compose_devices_mounts_and_ports():
    config = json.loads(_compose("--profile", "ascend", "--profile", "train", "config", "--format", "json"))
    services = config["services"]
    infer = services["infer"]
    devices = {d["source"] if isinstance(d, dict) else d.split(":")[0] for d in infer["devices"]}
    assert {"/dev/davinci0", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"} <= devices
    mounts = {v["target"]: v for v in infer["volumes"]}
    assert mounts["/models/bundle"]["read_only"] and mounts["/usr/local/Ascend/driver"]["read_only"]
    for name in ("infer", "infer-cpu"):
        (port,) = services[name]["ports"]
        assert port["host_ip"] == "127.0.0.1" and int(port["target"]) == 8000
    assert services["infer"]["environment"]["BACKEND"] == "acl"
    assert services["infer-cpu"]["environment"]["BACKEND"] == ""   # the service's auto: OpenVINO in that image
    gpu = services["train-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"] and gpu["count"] == -1
    npu = services["finetune-npu"]
    assert {"RANK_SIZE", "RANK_ID", "RANK_TABLE_FILE", "ASCEND_DEVICE_ID"} <= set(npu["environment"])
    assert not any("init_from" in arg for arg in npu["command"])   # the recipe's train.init_from applies


def test_the_npu_finetune_starts_from_what_train_gpu_writes():
    """npu-finetune.yaml's init_from is a path in the finetune container: under its RUNS mount, in the
    folder the train-gpu container writes its run to."""
    import yaml
    with open(os.path.join(ROOT, "model", "mbv3", "configs", "npu-finetune.yaml")) as f:
        init_from = yaml.safe_load(f)["train"]["init_from"]
    services = json.loads(_compose("--profile", "train", "config", "--format", "json"))["services"]
    gpu_command = services["train-gpu"]["command"]
    gpu_run = gpu_command[gpu_command.index("--model-dir") + 1]
    assert os.path.dirname(init_from) == gpu_run == "/runs/gpu"
    for name in ("train-gpu", "finetune-npu"):
        assert "/runs" in {v["target"] for v in services[name]["volumes"]}, name


def test_the_host_card_is_device_and_card_0_inside_both_ascend_containers():
    services = _config(env={"DEVICE": "3"})
    for name in ("infer", "finetune-npu"):
        devices = {d["source"] if isinstance(d, dict) else d.split(":")[0] for d in services[name]["devices"]}
        assert "/dev/davinci3" in devices and "/dev/davinci0" not in devices, name
    assert services["infer"]["environment"]["DEVICE_IDS"] == "0"           # the service's name for it
    assert services["finetune-npu"]["environment"]["ASCEND_DEVICE_ID"] == "0"   # CANN's name for it


def test_the_eight_card_override_adds_every_910_and_the_rank_size():
    config = json.loads(_compose("-f", "compose.yaml", "-f", "docker/compose.npu-8p.yaml", "--profile", "train",
                                 "config", "--format", "json"))
    npu = config["services"]["finetune-npu"]
    devices = {d["source"] if isinstance(d, dict) else d.split(":")[0] for d in npu["devices"]}
    assert {"/dev/davinci%d" % i for i in range(8)} <= devices and "/dev/davinci_manager" in devices
    assert npu["environment"]["RANK_SIZE"] == "8"


def test_the_npu_image_starts_training_through_the_card_launcher():
    text = open(_dockerfile("train-npu")).read()
    assert 'ENTRYPOINT ["/usr/local/bin/ascend-entrypoint", "/usr/local/bin/npu-launch", "mbv3"]' in text


# compose service -> the prefix of its limit variables
LIMITS = {"infer-cpu": "INFER_CPU", "infer": "INFER", "train-gpu": "TRAIN_GPU", "finetune-npu": "FINETUNE_NPU"}


def _config(*args, env=None):
    result = subprocess.run([_tool("docker-compose")] + list(args) + ["--profile", "ascend", "--profile", "train",
                                                                      "config", "--format", "json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            timeout=60, env=dict(os.environ, **(env or {})))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_every_service_has_memory_cpu_and_pids_limits_from_variables():
    services = _config()
    assert set(services) == set(LIMITS)
    for name, prefix in LIMITS.items():
        limits = services[name]["deploy"]["resources"]["limits"]
        assert int(limits["memory"]) >= 2 * 1024 ** 3 and float(limits["cpus"]) >= 2 and int(limits["pids"]) >= 256, name
    # training needs far more memory than a service
    memory = {name: int(services[name]["deploy"]["resources"]["limits"]["memory"]) for name in LIMITS}
    assert min(memory["train-gpu"], memory["finetune-npu"]) >= 4 * max(memory["infer-cpu"], memory["infer"])
    changed = _config(env={"%s_%s" % (p, v): x for p in LIMITS.values() for v, x in
                           (("MEMORY", "5g"), ("CPUS", "1.5"), ("PIDS", "77"))})
    for name in LIMITS:
        limits = changed[name]["deploy"]["resources"]["limits"]
        assert (int(limits["memory"]), float(limits["cpus"]), int(limits["pids"])) == (5 * 1024 ** 3, 1.5, 77), name


def test_the_eight_card_override_raises_the_npu_limits():
    one = _config()["finetune-npu"]["deploy"]["resources"]["limits"]
    eight = _config("-f", "compose.yaml", "-f", "docker/compose.npu-8p.yaml")["finetune-npu"]["deploy"]["resources"]["limits"]
    for key in ("memory", "cpus", "pids"):
        assert float(eight[key]) >= 4 * float(one[key]), key


def test_service_containers_are_read_only_without_capabilities():
    services = _config()
    for name in ("infer-cpu", "infer"):
        service = services[name]
        assert service["read_only"] and service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
    assert "tmpfs" not in services["infer-cpu"]   # it writes nothing
    assert services["infer"]["tmpfs"] == ["/tmp:size=64m"]
    assert services["infer"]["environment"]["ASCEND_PROCESS_LOG_PATH"].startswith("/tmp/")
    for name in ("train-gpu", "finetune-npu"):
        assert not services[name].get("read_only") and "user" not in services[name]   # the image's uid 10001


def test_cpu_threads_follow_the_cpu_limit_and_the_ascend_gid_reaches_both_ascend_containers():
    from classifier.settings import Settings
    services = _config(env={"INFER_CPU_CPUS": "1.5", "ASCEND_GID": "4242"})
    env = services["infer-cpu"]["environment"]
    # unset: the service's 0 sizes both from its cgroup's CPU quota (test_service_settings.py), so 1.5 CPUs work
    assert (env["THREADS"], env["PREPROCESS_WORKERS"]) == ("", "") and Settings.THREADS == Settings.PREPROCESS_WORKERS == 0
    assert services["infer"]["environment"]["PREPROCESS_WORKERS"] == ""
    assert services["infer"]["group_add"] == ["4242"] and services["finetune-npu"]["group_add"] == ["4242"]
    assert _config(env={"THREADS": "1"})["infer-cpu"]["environment"]["THREADS"] == "1"


# what the service containers fix, whatever the environment says
FIXED = {"infer-cpu": {"MODEL_DIR": "/models/bundle"},
         "infer": {"MODEL_DIR": "/models/bundle", "BACKEND": "acl", "DEVICE_IDS": "0"}}


def test_the_service_settings_defaults_live_in_the_service():
    """With nothing set, the environment compose gives each service loads as the service's own
    defaults; a variable the user sets is passed on as it is."""
    from classifier import settings as settings_mod
    defaults = settings_mod.Settings()
    names = [f.name for f in settings_mod.fields(settings_mod.Settings)]
    passed = {"MAX_BATCH": "32", "MAX_DELAY_MS": "2.5", "MAX_QUEUE": "64", "LOG_LEVEL": "debug",
              "MAX_BODY_BYTES": "1000", "MAX_CONCURRENT_REQUESTS": "3", "PREPROCESS_MEMORY_MB": "99",
              "PREPROCESS_WORKERS": "2", "THREADS": "3", "CPU_WORKERS": "2", "BACKEND": "onnxruntime",
              "PREPROCESSING": "reference", "BODY_MEMORY_MB": "300", "MAX_CONNECTIONS": "50",
              "PRECISION": "f32"}
    changed = _config(env=passed)
    for name, service in _config().items():
        if name not in FIXED:
            continue
        env = service["environment"]
        keys = {k for k in env if k in names and k not in FIXED[name]}
        assert len(keys) >= 8 and keys <= set(passed), (name, keys)
        assert {k: env[k] for k in keys} == {k: "" for k in keys}, name   # no value of compose's own
        loaded = settings_mod.load(environ=env, dotenv=None)
        assert {n: getattr(loaded, n) for n in names if n not in FIXED[name]} == \
            {n: getattr(defaults, n) for n in names if n not in FIXED[name]}, name
        assert {n: getattr(loaded, n) for n in FIXED[name]} == FIXED[name], name
        assert {k: changed[name]["environment"][k] for k in keys} == {k: passed[k] for k in keys}, name


def test_the_npu_image_installs_for_the_interpreter_its_tensorflow_is_for():
    """Huawei's tensorflow-modelzoo image has TensorFlow under the apt Python 3.7 (/usr/bin/python);
    `python3 -m pip` may install for another one."""
    text = open(_dockerfile("train-npu")).read()
    assert re.search(r"^ARG PYTHON=\S+$", text, re.M) and "MBV3_PYTHON=${PYTHON}" in text
    pips = [line for line in text.splitlines() if "pip install" in line]
    assert len(pips) == 2 and all('"$PYTHON" -m pip install' in line for line in pips)
    assert not any("python3" in line for line in text.splitlines() if not line.startswith("#"))
    assert text.index("import sys, tensorflow") < text.index("pip install")   # stops on the wrong interpreter


def test_the_convert_service_needs_no_card_and_writes_into_the_bundle():
    """ATC is offline: the convert service mounts no device, no driver and no npu-smi (so `mbv3 om`
    cannot pick a chip from the host), only BUNDLE, writable, and has limits from variables."""
    service = json.loads(_compose("--profile", "convert", "config", "--format", "json"))["services"]["convert"]
    assert "devices" not in service and "runtime" not in service
    assert [(v["source"], v["target"], v.get("read_only", False)) for v in service["volumes"]] == \
        [(os.path.join(ROOT, "bundles", "mbv3"), "/bundle", False)]
    assert service["command"] == ["om", "--bundle", "/bundle"] and service["cap_drop"] == ["ALL"]
    assert service["build"]["dockerfile"] == "docker/convert-ascend.Dockerfile"
    assert service["environment"] == {"ASCEND_CHIP": ""}   # unset: mbv3 om's default chip
    chosen = subprocess.run([_tool("docker-compose"), "--profile", "convert", "config", "--format", "json"], cwd=ROOT,
                            stdout=subprocess.PIPE, universal_newlines=True, env=dict(os.environ, ASCEND_CHIP="310P3"))
    assert json.loads(chosen.stdout)["services"]["convert"]["environment"] == {"ASCEND_CHIP": "310P3"}
    limits = service["deploy"]["resources"]["limits"]
    assert int(limits["memory"]) >= 2 * 1024 ** 3 and float(limits["cpus"]) >= 1 and int(limits["pids"]) >= 256


def test_the_stand_ins_carry_the_names_of_the_serving_chips_bases():
    """The container tests build on the layouts users get: each chip's default base (the Makefile's
    ASCEND_CHIP table, compose's fallback) is the name of a stand-in of that layout."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("standins_build", os.path.join(ROOT, "docker", "standins", "build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    make = open(os.path.join(ROOT, "Makefile")).read()
    bases = dict(re.findall(r"^ASCEND_INFER_BASE_(\w+) = (\S+)$", make, re.M))
    assert bases == {"310": build.ASCEND_INFER_IMAGE, "310P3": build.CANN_TOOLKIT_IMAGE}
    assert build.STANDINS[build.ASCEND_INFER_IMAGE][0] == "cann-nnrt.Dockerfile"
    assert build.STANDINS[build.CANN_TOOLKIT_IMAGE][0] == "cann-toolkit.Dockerfile"
