"""The project's images built from the real Dockerfiles and run on a real Docker engine.

What is real: the engine (dockerd 20.10), every `docker build` of docker/*.Dockerfile, compose.yaml
run by `docker-compose up` / `run` (through `make serve-container`, `make om`, `make train-gpu`, `make
finetune-npu`, with an override file that only removes the GPU reservation and Ascend device nodes),
the images' healthchecks and entrypoints, signals from `docker stop`, HTTP from the host on
127.0.0.1, and the model bundle, TFRecords and checkpoints crossing the host/container boundary.

What is a stand-in (no registry is reachable here; docker/standins/ says what each reproduces):
  - python:3.11-slim             Debian bookworm's CPython 3.11 with pip;
  - tensorflow/...:2.17.0-gpu    TensorFlow 2.17 CPU wheel, no CUDA: train-gpu trains on the CPU target
                                 and its GPU recipe is shown to stop with a clear "no GPU" error;
  - ascendai/cann (toolkit)      cann-container-image's layout (the toolkit's environment in ENV, pyACL in
                                 ascend-toolkit/latest/python/site-packages, `atc` in latest/bin) with the
                                 pyACL simulator and a stand-in `atc` (writes a simulated .om): the base of
                                 infer-ascend (310P) and convert-ascend (`make om`); no 310P, no real ATC;
  - ascend-infer (nnrt)          ascend-infer's layout (ENV PYTHONPATH to nnrt/latest/pyACL/.../acl,
                                 USER HwHiAiUser) with the pyACL simulator: infer-ascend-nnrt (310), no 310;
  - tensorflow-modelzoo (CANN TF) nnae + tfplugin, no toolkit and no atc, with mbv3's recording double
                                 as `npu_device`: no 910.
Nothing here has run on a GPU or an Ascend card.

The engine comes from DOCKER_HOST, else docker/engine.sh's socket. Without one these tests skip,
except under CI=true (or MBV3_CONTAINER_TESTS=1), where a missing engine is a failure.
"""
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("mbv3_standins", os.path.join(ROOT, "docker", "standins", "build.py"))
standins = importlib.util.module_from_spec(_spec)   # not `import build`: PyPI's `build` package has that name
_spec.loader.exec_module(standins)

BIN = os.path.dirname(sys.executable)
DOCKER = standins.DOCKER
PROJECT = "mbv3test%d" % os.getpid()
REQUIRED = os.environ.get("CI", "").lower() == "true" or os.environ.get("MBV3_CONTAINER_TESTS") == "1"
# compose's CPU defaults for infer and training (4, 16) exceed this machine's cores, which docker refuses
CPUS = str(min(2, os.cpu_count()))


def _docker_host():
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    return subprocess.run([os.path.join(ROOT, "docker", "engine.sh"), "host"], stdout=subprocess.PIPE,
                          universal_newlines=True, check=True).stdout.strip()


def run(cmd, timeout=600, check=True, env=None):
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                            timeout=timeout, env=dict(os.environ, **(env or {})))
    if check and result.returncode != 0:
        raise AssertionError("%s exited %d:\n%s" % (" ".join(map(str, cmd)), result.returncode, result.stdout[-5000:]))
    return result


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine():
    host = _docker_host()
    os.environ["DOCKER_HOST"] = host
    if not os.path.exists(DOCKER) or run([DOCKER, "version"], check=False, timeout=30).returncode != 0:
        message = "no Docker engine at %s (start one with docker/engine.sh start)" % host
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return host


@pytest.fixture(scope="module")
def images(engine):
    """The stand-in bases and the project's images (cached layers make a warm run take seconds)."""
    t0 = time.time()
    standins.build(sorted(standins.IMAGES))
    sys.stderr.write("container images ready in %.0f s\n" % (time.time() - t0))
    return {name: "mbv3/%s:latest" % name for name in standins.IMAGES}


def readable_dir(path):
    """Bind-mounted folders the containers' users (uid 10001, or root) can read and write."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from random_models import random_bundle
    return random_bundle(str(readable_dir(str(tmp_path_factory.mktemp("ctr"))) + "/bundle"),
                         "small", 0.5, 11, 96, seed=3, name="container_test")


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    from mbv3 import digits
    root = readable_dir(str(tmp_path_factory.mktemp("ctrdata")))
    digits.write_digits_folder(os.path.join(root, "images"), size=32)
    run([os.path.join(BIN, "mbv3"), "data", "build", "--images", os.path.join(root, "images"),
         "--output", os.path.join(root, "data"), "--val-split", "0.2"])
    return readable_dir(os.path.join(root, "data"))


def image_bytes(seed):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (120, 150, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def host_probabilities(bundle_dir, data):
    """What the host's ONNX Runtime says for the same image, through the preprocessing the images
    serve with (the fast path: both images install simplejpeg and OpenCV)."""
    from mbv3 import fast_preprocess
    from mbv3.classify import softmax
    from mbv3.onnx_classifier import OnnxClassifier
    clf = OnnxClassifier(bundle_dir)
    x = fast_preprocess.select("fast")[0](data, clf.bundle.preprocessing)[None]
    return softmax(clf.logits(x))[0]


class Compose(object):
    """docker-compose on the repository's compose.yaml (plus an override file when given)."""

    def __init__(self, env, override=None):
        self.env = env
        self.files = ["-f", os.path.join(ROOT, "compose.yaml")] + (["-f", override] if override else [])

    def __call__(self, *args, **kwargs):
        cmd = [os.path.join(BIN, "docker-compose"), "-p", PROJECT] + self.files + list(args)
        return run(cmd, env=self.env, **kwargs)

    def container(self, service):
        return self("ps", "-q", service).stdout.strip()


def wait_healthy(container, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = json.loads(run([DOCKER, "inspect", "--format", "{{json .State}}", container]).stdout)
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return state
        if not state.get("Running"):
            break
        time.sleep(1)
    logs = run([DOCKER, "logs", "--tail", "60", container], check=False).stdout
    raise AssertionError("container %s not healthy (%s):\n%s" % (container, state, logs))


def process_status(container):
    """/proc/1/status of the container's main process, as a dict."""
    status = run([DOCKER, "exec", container, "cat", "/proc/1/status"]).stdout
    return dict(line.split(":", 1) for line in status.splitlines() if ":" in line)


def process_uid(container):
    return int(process_status(container)["Uid"].split()[0])


def classify(port, data):
    """Every class of the 11-class bundle but slim's background (index 0), which is never a prediction."""
    r = requests.post("http://127.0.0.1:%d/classify?top_k=10" % port, data=data,
                      headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    return result


def assert_same_answer(answer, expected):
    got = {p["index"]: p["score"] for p in answer["predictions"]}
    assert answer["predictions"][0]["index"] == int(np.argmax(expected[1:])) + 1
    np.testing.assert_allclose([got[i] for i in range(1, len(expected))], expected[1:], atol=2e-3)


@pytest.fixture(scope="module")
def cpu_service(images, bundle):
    """`make serve-container MODEL=bundle` = `docker compose up infer-cpu` with BUNDLE set: (port, container, make's output)."""
    port = free_port()
    compose = Compose({"BUNDLE": bundle, "PORT": str(port)})
    try:
        out = run(["make", "-C", ROOT, "serve-container", "MODEL=%s" % bundle, "PORT=%d" % port, "UP_FLAGS=-d --no-build",
                   "COMPOSE=%s -p %s" % (os.path.join(BIN, "docker-compose"), PROJECT)]).stdout
        container = compose.container("infer-cpu")
        wait_healthy(container)
        yield port, container, out
    finally:
        compose("down", "-v", "--timeout", "20", check=False)


def test_make_serve_container_compose_up_healthy_non_root_and_classifies(cpu_service, bundle):
    port, container, out = cpu_service
    assert "up -d --no-build infer-cpu" in out
    assert process_uid(container) == 10001
    data = image_bytes(0)
    assert_same_answer(classify(port, data), host_probabilities(bundle, data))
    bad = requests.post("http://127.0.0.1:%d/classify" % port, data=b"not an image",
                        headers={"Content-Type": "image/png"}, timeout=30)
    assert bad.status_code == 400 and requests.get("http://127.0.0.1:%d/readyz" % port, timeout=5).ok
    served = requests.get("http://127.0.0.1:%d/v1/model" % port, timeout=5).json()
    # BACKEND=auto in the CPU image: OpenVINO, and the fast preprocessing path
    assert served["name"] == "container_test" and "openvino" in str(served["serving"]["backend"]).lower()
    assert str(served["serving"]["preprocessing"]).startswith("fast")
    assert_pages_installed(port)


def assert_pages_installed(port):
    """The page and the offline docs' files are in the image (package data, fastapi-offline)."""
    for path, marker in [("/", b"ui/page.js"), ("/ui/page.js", b"v1/model"), ("/docs", b"docs/files/swagger-ui-bundle.js"),
                         ("/docs/files/swagger-ui-bundle.js", b"SwaggerUIBundle")]:
        r = requests.get("http://127.0.0.1:%d%s" % (port, path), timeout=10)
        assert r.status_code == 200 and marker in r.content, (path, r.status_code)


def host_config(container):
    return json.loads(run([DOCKER, "inspect", "--format", "{{json .HostConfig}}", container]).stdout)


def test_infer_cpu_runs_read_only_within_its_limits_and_takes_a_3mb_multipart_part(cpu_service):
    """compose's defaults as `docker inspect` shows them; a part over starlette's 1 MB spool size
    (which went to a temporary file) is answered on the read-only root."""
    port, container, _ = cpu_service
    hc = host_config(container)
    assert hc["ReadonlyRootfs"] and hc["CapDrop"] == ["ALL"] and "no-new-privileges:true" in hc["SecurityOpt"]
    assert (hc["Memory"], hc["NanoCpus"], hc["PidsLimit"]) == (3 * 1024 ** 3, 2 * 10 ** 9, 256)
    env = json.loads(run([DOCKER, "inspect", "--format", "{{json .Config.Env}}", container]).stdout)
    assert {"THREADS=", "PREPROCESS_WORKERS="} <= set(env)   # unset: the service sizes both from its CPU quota
    serving = requests.get("http://127.0.0.1:%d/v1/model" % port, timeout=10).json()["serving"]
    # the limit's 2 CPUs: two decoding threads, two CPU workers of one thread each (CPU_WORKERS=0)
    assert len(serving["devices"]) == serving["preprocess_workers"] == 2 and serving["threads"] == 1, serving
    assert "PREPROCESS_MEMORY_MB=" in env   # empty is unset: the service's own default applies
    assert serving["limits"]["preprocess_memory_mb"] == 1024
    denied = run([DOCKER, "exec", container, "sh", "-c", "touch /tmp/x"], check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stdout, denied.stdout
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(buf, "BMP")
    assert len(buf.getvalue()) > 3 * 1024 * 1024
    r = requests.post("http://127.0.0.1:%d/classify" % port, files=[("file", ("3mb.bmp", buf.getvalue(), "image/bmp"))],
                      timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["filename"] == "3mb.bmp"


ASCEND_OVERRIDE = """\
# The test machine has no Ascend devices or driver: compose.yaml's `infer` service without them, on
# the image built on the layout under test, plus a writable folder for the pyACL simulator's exit report.
services:
  infer:
    image: %(image)s
    devices: !reset []
    volumes: !override
      - "%(bundle)s:/models/bundle:ro"
      - "%(report)s:/report"
    environment:
      ACL_SIM_EXIT_REPORT: /report/acl-exit.json
"""


@pytest.fixture(scope="module")
def om_bundle(images, bundle, tmp_path_factory):
    """`make om` on a copy of the bundle, as a user who is neither root nor the image's: ATC (the
    toolkit stand-in's) in the convert container, for the chip given, with AIPP and four profiles."""
    work = readable_dir(str(tmp_path_factory.mktemp("om")))
    om_dir = os.path.join(work, "bundle")
    shutil.copytree(bundle, om_dir)
    os.chmod(om_dir, 0o777)
    for name in os.listdir(om_dir):
        os.chmod(os.path.join(om_dir, name), 0o666)
    try:
        out = run(["make", "-C", ROOT, "om", "BUNDLE=%s" % om_dir, "SOC_VERSION=Ascend310P3", "PROFILES=1 2 4 8", "AIPP=1",
                   "CONVERT_USER=4321:4321", "COMPOSE=%s" % os.path.join(BIN, "docker-compose")],
                  env={"COMPOSE_PROJECT_NAME": PROJECT, "CONVERT_CPUS": CPUS}).stdout
    finally:
        Compose({})("--profile", "convert", "down", check=False)   # the project network `run` made
    return om_dir, out


def test_make_om_converts_in_the_toolkit_image_for_the_chip_given(om_bundle):
    om_dir, out = om_bundle
    assert "--profile convert run --rm --user 4321:4321 convert" in " ".join(out.split()), out
    assert "running: atc --framework=3" in out and "--soc_version=Ascend310P3 " in out, out
    with open(os.path.join(om_dir, "model.om")) as f:
        assert json.load(f)["format"] == "acl-sim-om"   # written by the stand-in atc on the toolkit layout's PATH
    meta = json.load(open(os.path.join(om_dir, "model.json")))
    assert meta["om"]["soc_version"] == "Ascend310P3", meta["om"]
    assert meta["om"]["aipp"] and meta["om"]["batch_profiles"] == [1, 2, 4, 8], out
    assert os.stat(os.path.join(om_dir, "model.om")).st_uid == 4321   # written as CONVERT_USER


def test_only_the_convert_image_has_atc_and_it_never_asks_the_host_for_the_chip(images, bundle):
    found = run([DOCKER, "run", "--rm", "--entrypoint", "sh", images["convert-ascend"], "-c", "command -v atc"]).stdout
    assert found.strip() == "/usr/local/Ascend/ascend-toolkit/latest/bin/atc"   # from ENV, as cann-container-image sets it
    # Huawei's TensorFlow training image installs nnae + tfplugin, not the toolkit: no atc there
    missing = run([DOCKER, "run", "--rm", "--entrypoint", "/usr/local/bin/ascend-entrypoint", images["train-npu"],
                   "sh", "-c", "command -v atc"], check=False)
    assert missing.returncode != 0 and not missing.stdout.strip(), missing.stdout
    from mbv3 import atc
    printed = run([DOCKER, "run", "--rm", "-v", "%s:/bundle:ro" % bundle, images["convert-ascend"],
                   "om", "--bundle", "/bundle", "--print"]).stdout
    assert "--soc_version=%s " % atc.DEFAULT_SOC_VERSION in printed, printed   # no npu-smi to ask: the default chip


# layout -> (image, where `import acl` must find pyACL with nothing but the image's ENV)
LAYOUTS = {"toolkit": ("infer-ascend", standins.TOOLKIT_ACL), "nnrt": ("infer-ascend-nnrt", standins.NNRT_ACL)}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_infer_ascend_serves_an_om_from_make_om_through_the_acl_backend(layout, images, bundle, om_bundle, tmp_path):
    """The inference image on each CANN layout Huawei publishes (cann-container-image's toolkit for
    310P, ascend-infer's nnrt for 310) serves the .om `make om` wrote, through the pyACL simulator
    found where that layout keeps pyACL."""
    name, acl_path = LAYOUTS[layout]
    work = readable_dir(str(tmp_path / "ascend"))
    report = readable_dir(os.path.join(work, "report"))
    override = os.path.join(work, "override.yaml")
    with open(override, "w") as f:
        f.write(ASCEND_OVERRIDE % {"image": images[name], "bundle": om_bundle[0], "report": report})
    port = free_port()
    compose = Compose({"PORT": str(port), "INFER_CPUS": CPUS, "ASCEND_GID": "4242"}, override)
    try:
        compose("--profile", "ascend", "up", "-d", "--no-build", "infer")
        container = compose.container("infer")
        wait_healthy(container)
        found = run([DOCKER, "exec", container, "python3", "-c", "import acl; print(acl.__file__)"]).stdout.strip()
        assert found == acl_path, found
        assert process_uid(container) == 10001
        assert "4242" in process_status(container)["Groups"].split()   # group_add: the host's HwHiAiUser gid
        hc = host_config(container)
        assert hc["ReadonlyRootfs"] and hc["CapDrop"] == ["ALL"] and "no-new-privileges:true" in hc["SecurityOpt"]
        assert (hc["Memory"], hc["NanoCpus"], hc["PidsLimit"]) == (4 * 1024 ** 3, int(float(CPUS) * 10 ** 9), 512)
        # CANN's log path is on the tmpfs; the rest of the root is read-only
        run([DOCKER, "exec", container, "sh", "-c", "mkdir -p $ASCEND_PROCESS_LOG_PATH && touch $ASCEND_PROCESS_LOG_PATH/x"])
        assert run([DOCKER, "exec", container, "touch", "/app/x"], check=False).returncode != 0
        served = requests.get("http://127.0.0.1:%d/v1/model" % port, timeout=5).json()
        assert "acl" in str(served["serving"]["backend"]).lower(), served["serving"]
        assert_pages_installed(port)
        for seed in range(3):
            data = image_bytes(seed)
            # AIPP: the device gets uint8 and normalises itself; the answer matches float ONNX closely.
            assert_same_answer(classify(port, data), host_probabilities(bundle, data))
        compose("--profile", "ascend", "stop", "--timeout", "30", "infer")
        state = json.loads(run([DOCKER, "inspect", "--format", "{{json .State}}", container]).stdout)
        assert state["ExitCode"] == 0, state
    finally:
        compose("--profile", "ascend", "down", "-v", "--timeout", "20", check=False)
    exit_report = json.load(open(os.path.join(report, "acl-exit.json")))
    assert exit_report["finalized"] and not exit_report["leaks"] and not exit_report["errors"], exit_report
    assert exit_report["executes"] >= 3


def latest_step(model_dir):
    from mbv3 import checkpoint
    prefix = checkpoint.latest(model_dir)
    assert prefix, os.listdir(model_dir)
    return int(prefix.rsplit("-", 1)[1])


TRAIN_OVERRIDE = """\
# No GPU driver and no Ascend devices here: compose.yaml's training services without the GPU
# reservation and the device nodes and driver mounts; the adapter stand-in's report is passed through.
services:
  train-gpu:
    deploy:
      resources:
        reservations: !reset {}
  finetune-npu:
    devices: !reset []
    volumes: !override
      - "${DATA}:/data:ro"
      - "${RUNS}:/runs"
    environment:
      NPU_SIM_REPORT: "/runs/npu-adapter-{rank}.json"
"""


def make_target(target, work, env=None, **variables):
    """`make <target>` as a user runs it, on compose.yaml plus TRAIN_OVERRIDE, with the venv's docker-compose."""
    override = os.path.join(work, "train-override.yaml")
    with open(override, "w") as f:
        f.write(TRAIN_OVERRIDE)
    env = dict(env or {}, COMPOSE_FILE=os.pathsep.join([os.path.join(ROOT, "compose.yaml"), override]),
               COMPOSE_PROJECT_NAME=PROJECT, TRAIN_GPU_CPUS=CPUS, FINETUNE_NPU_CPUS=CPUS)
    args = ["%s=%s" % kv for kv in sorted(variables.items())]
    return run(["make", "-C", ROOT, target, "COMPOSE=%s" % os.path.join(BIN, "docker-compose")] + args, env=env).stdout


@pytest.fixture(scope="module")
def gpu_run(images, tfrecords, tmp_path_factory):
    """`make train-gpu` for a few steps (CPU target: the stand-in has no GPU)."""
    runs = readable_dir(str(tmp_path_factory.mktemp("ctrruns")))
    out = make_target("train-gpu", runs, DATA=tfrecords, RUNS=runs, GPU_RECIPE="smoke", TRAIN_USER="4321:4321",
                      SET="target.name=cpu train.steps=6 checkpoint.every_steps=3")
    return runs, out


def test_make_train_gpu_trains_in_the_image_and_writes_a_checkpoint(gpu_run):
    runs, out = gpu_run
    assert latest_step(os.path.join(runs, "gpu")) == 6, out
    assert os.path.exists(os.path.join(runs, "gpu", "config.yaml"))
    owners = {os.stat(os.path.join(runs, "gpu", name)).st_uid for name in os.listdir(os.path.join(runs, "gpu"))}
    assert owners == {4321}   # written as TRAIN_USER (the invoking user by default), not root
    assert "compose" in out and "run --rm --user 4321:4321 train-gpu" in out   # make printed the command it ran


def test_training_images_run_as_non_root_within_their_limits(images, tfrecords, tmp_path):
    """No --user: both images run as uid 10001, the NPU one in group HwHiAiUser and with the host's
    HwHiAiUser gid from group_add (ASCEND_GID); compose's limits reach the containers of `compose run`."""
    runs = readable_dir(str(tmp_path / "runs"))
    override = os.path.join(runs, "train-override.yaml")
    with open(override, "w") as f:
        f.write(TRAIN_OVERRIDE)
    compose = Compose({"DATA": tfrecords, "RUNS": runs, "TRAIN_GPU_CPUS": CPUS, "FINETUNE_NPU_CPUS": CPUS,
                       "ASCEND_GID": "4242"}, override)
    for service in ("train-gpu", "finetune-npu"):
        compose("--profile", "train", "run", "-d", "--entrypoint", "sleep", service, "300")
        container = run([DOCKER, "ps", "-q", "--filter", "label=com.docker.compose.project=%s" % PROJECT,
                         "--filter", "label=com.docker.compose.service=%s" % service]).stdout.split()[0]
        try:
            hc = host_config(container)
            assert (hc["Memory"], hc["NanoCpus"], hc["PidsLimit"]) == (32 * 1024 ** 3, int(float(CPUS) * 10 ** 9), 4096)
            status = process_status(container)
            assert status["Uid"].split()[0] == "10001", status
            if service == "finetune-npu":
                assert status["Gid"].split()[0] == "1000" and "4242" in status["Groups"].split(), status
        finally:
            run([DOCKER, "rm", "-f", container], check=False)


def test_train_gpu_image_without_a_gpu_stops_with_a_clear_error(images, tfrecords, tmp_path):
    runs = readable_dir(str(tmp_path / "runs"))
    result = run([DOCKER, "run", "--rm", "-v", "%s:/data:ro" % tfrecords, "-v", "%s:/runs" % runs, images["train-gpu"],
                  "train", "--config", "gpu-4p", "--data", "/data", "--model-dir", "/runs/gpu4p"], check=False)
    assert result.returncode == 1, result.stdout
    assert "mbv3: error: target gpu: TensorFlow sees no GPU" in result.stdout, result.stdout


def test_make_finetune_npu_starts_from_the_gpu_checkpoint_through_npu_device(gpu_run, tfrecords):
    runs, _ = gpu_run
    out = make_target("finetune-npu", runs, DATA=tfrecords, RUNS=runs, NPU_RECIPE="smoke",
                      INIT_FROM="/runs/gpu/model.ckpt-6", SET="target.name=npu train.steps=4 checkpoint.every_steps=2")
    assert latest_step(os.path.join(runs, "npu")) == 4, out
    owners = {os.stat(os.path.join(runs, "npu", name)).st_uid for name in os.listdir(os.path.join(runs, "npu"))}
    assert owners == {10001}   # the image's user, not root (NPU_USER unset)
    assert "loaded /runs/gpu/model.ckpt-6 (step 6, raw weights); starting at step 0" in out   # the trainer's own line
    calls = [c[0] for c in json.load(open(os.path.join(runs, "npu-adapter-0.json")))["calls"]]
    assert calls.index("global_options") < calls.index("open") < calls.index("set_npu_loop_size"), calls
    assert "all_reduce" not in calls   # one card: nothing to reduce


def test_make_finetune_npu_on_two_cards_runs_one_process_per_card(gpu_run, tfrecords, tmp_path):
    runs = readable_dir(str(tmp_path / "runs"))   # a fresh RUNS/npu: the one-card test's run is complete
    shutil.copytree(os.path.join(gpu_run[0], "gpu"), os.path.join(runs, "gpu"))
    with open(os.path.join(runs, "rank_table.json"), "w") as f:
        json.dump({"status": "completed", "server_count": "1"}, f)   # read by HCCL on a 910, not by the double
    out = make_target("finetune-npu", runs, env={"RANK_SIZE": "2", "RANK_TABLE_FILE": "/runs/rank_table.json"},
                      DATA=tfrecords, RUNS=runs, NPU_RECIPE="smoke", INIT_FROM="/runs/gpu/model.ckpt-6",
                      SET="target.name=npu train.steps=4 checkpoint.every_steps=2 train.batch_size=16")
    assert latest_step(os.path.join(runs, "npu")) == 4, out
    assert "2 card(s) (this is rank 1)" in out and "2 card(s) (this is rank 0)" in out, out
    opened = []
    for rank in (0, 1):
        calls = json.load(open(os.path.join(runs, "npu-adapter-%d.json" % rank)))["calls"]
        names = [c[0] for c in calls]
        assert "broadcast" in names and "all_reduce" in names, names   # initial weights, gradients over HCCL
        opened += [int(c[1]) for c in calls if c[0] == "open"]
    assert sorted(opened) == [0, 1]   # ASCEND_DEVICE_ID 0 and 1


def test_two_cards_without_a_rank_table_stop_with_a_clear_error(images, tfrecords, tmp_path):
    runs = readable_dir(str(tmp_path / "runs"))
    result = run([DOCKER, "run", "--rm", "-e", "RANK_SIZE=2", "-v", "%s:/data:ro" % tfrecords, "-v", "%s:/runs" % runs,
                  images["train-npu"], "train", "--config", "smoke", "--data", "/data", "--model-dir", "/runs/npu"],
                 check=False)
    assert result.returncode == 2 and "needs RANK_TABLE_FILE" in result.stdout, result.stdout


def test_docker_stop_of_a_two_card_run_checkpoints_every_card_and_resumes(images, tfrecords, tmp_path):
    """`docker stop` sends SIGTERM to the launcher (PID 1); it must reach both trainers, the chief
    saves, the container exits 128+15, and the next start continues from that step."""
    runs = readable_dir(str(tmp_path / "runs"))
    with open(os.path.join(runs, "rank_table.json"), "w") as f:
        json.dump({"status": "completed"}, f)
    def train(steps):
        return ["-e", "RANK_SIZE=2", "-e", "RANK_TABLE_FILE=/runs/rank_table.json",
                "-v", "%s:/data:ro" % tfrecords, "-v", "%s:/runs" % runs, images["train-npu"],
                "train", "--config", "smoke", "--data", "/data", "--model-dir", "/runs/npu", "--set", "target.name=npu",
                "--set", "train.steps=%d" % steps, "--set", "checkpoint.every_steps=100000", "--set", "log.every_steps=1"]
    container = run([DOCKER, "run", "-d"] + train(100000)).stdout.strip()
    try:
        deadline = time.time() + 120
        while "[worker 1] step" not in run([DOCKER, "logs", container], check=False).stdout:
            assert time.time() < deadline, run([DOCKER, "logs", container], check=False).stdout
            time.sleep(1)
        run([DOCKER, "stop", "--time", "60", container])
        state = json.loads(run([DOCKER, "inspect", "--format", "{{json .State}}", container]).stdout)
        logs = run([DOCKER, "logs", container], check=False).stdout
    finally:
        run([DOCKER, "rm", "-f", container], check=False)
    assert state["ExitCode"] == 128 + 15, logs
    stopped_at = latest_step(os.path.join(runs, "npu"))
    assert 0 < stopped_at < 100000, logs
    again = run([DOCKER, "run", "--rm"] + train(stopped_at + 2)).stdout
    assert latest_step(os.path.join(runs, "npu")) == stopped_at + 2, again
