"""Build the stand-in base images and then the project's real images on a local Docker engine.

No registry is reachable on the development and CI machines, so the registry images the Dockerfiles
name are replaced by stand-ins built from Debian's packages and tagged with those names; the real
Dockerfiles then build unchanged. Each stand-in's Dockerfile says what it reproduces and what not.
The Ascend images are built on one stand-in per layout Huawei publishes: the inference image on both
the nnrt layout (ascend-infer, the 310 path) and the toolkit layout (cann-container-image, the 310P
path), and the convert image (`make om`) on the toolkit layout, the one with `atc`.

    DOCKER_HOST=$(docker/engine.sh start) python docker/standins/build.py [--only infer-cpu ...]

Layers are cached in the engine's data root, so a second run takes seconds.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")

# The registry images the Dockerfiles and compose.yaml name by default.
PYTHON_IMAGE = "python:3.11-slim"
TF_GPU_IMAGE = "tensorflow/tensorflow:2.17.0-gpu"
CANN_TF_IMAGE = "ascendhub.huawei.com/public-ascendhub/tensorflow-modelzoo:23.0.RC2-TF2.6.5-ubuntu18.04"
# The two Ascend layouts, under the names the Makefile's ASCEND_CHIP table and compose.yaml give the
# serving chips' bases: the toolkit stand-in as the cann-container-image 310P tag
# (cann/8.2.rc1-310p-ubuntu22.04-py3.11/Dockerfile there), the nnrt one as the locally built
# ascend-infer image the 310 uses. The Ascend images get them as BASE_IMAGE, whatever their default.
CANN_TOOLKIT_IMAGE = "ascendai/cann:8.2.rc1-310p-ubuntu22.04-py3.11"
ASCEND_INFER_IMAGE = "ascend-infer:latest"

# The project's images, tagged mbv3/<name>:latest: name -> (Dockerfile, the stand-in it is built on,
# passed as BASE_IMAGE). compose.yaml names all but infer-ascend-nnrt, which the container tests
# serve through an override file.
IMAGES = {
    "infer-cpu": ("docker/infer-cpu.Dockerfile", PYTHON_IMAGE),
    "infer-ascend": ("docker/infer-ascend.Dockerfile", CANN_TOOLKIT_IMAGE),
    "infer-ascend-nnrt": ("docker/infer-ascend.Dockerfile", ASCEND_INFER_IMAGE),
    "convert-ascend": ("docker/convert-ascend.Dockerfile", CANN_TOOLKIT_IMAGE),
    "train-gpu": ("docker/train-gpu.Dockerfile", TF_GPU_IMAGE),
    "train-npu": ("docker/train-npu.Dockerfile", CANN_TF_IMAGE),
}

NNRT_SET_ENV = """\
# stand-in for CANN's nnrt set_env.sh: pyACL's folder on PYTHONPATH (ascend-infer's ENV has it too)
export ASCEND_HOME_PATH=/usr/local/Ascend/nnrt/latest
export PYTHONPATH=/usr/local/Ascend/nnrt/latest/pyACL/python/site-packages/acl${PYTHONPATH:+:$PYTHONPATH}
"""
TOOLKIT_SET_ENV = """\
# stand-in for CANN's ascend-toolkit set_env.sh: what cann-container-image also sets as ENV
export ASCEND_TOOLKIT_HOME=/usr/local/Ascend/ascend-toolkit/latest
export ASCEND_HOME_PATH=${ASCEND_TOOLKIT_HOME}
export PATH=${ASCEND_TOOLKIT_HOME}/bin:${PATH}
export PYTHONPATH=${ASCEND_TOOLKIT_HOME}/python/site-packages${PYTHONPATH:+:$PYTHONPATH}
"""
NNAE_SET_ENV = """\
# stand-in for CANN's nnae set_env.sh (the training image's ENV puts the TF adapter on PYTHONPATH)
export ASCEND_HOME_PATH=/usr/local/Ascend/nnae/latest
"""
ATC_WRAPPER = """#!/bin/sh
# stand-in for CANN's atc: services/classifier/tests/fake_atc.py writes a simulated .om
exec python3 /usr/local/Ascend/ascend-toolkit/latest/sim/fake_atc.py "$@"
"""


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy(os.path.join(ROOT, src), dst)


# Where pyACL's module is in each layout: nnrt keeps acl.so in a folder of its own (on PYTHONPATH by
# ascend-infer's ENV), the toolkit in python/site-packages itself (on PYTHONPATH by
# cann-container-image's ENV). The container tests check `acl.__file__` against these.
NNRT_ACL = "/usr/local/Ascend/nnrt/latest/pyACL/python/site-packages/acl/acl.py"
TOOLKIT_ACL = "/usr/local/Ascend/ascend-toolkit/latest/python/site-packages/acl.py"
ASCEND = "/usr/local/Ascend/"


def _stage_cann_nnrt(ctx):
    _write(os.path.join(ctx, "nnrt/set_env.sh"), NNRT_SET_ENV)
    _copy("services/classifier/tests/acl_sim/acl.py", os.path.join(ctx, NNRT_ACL[len(ASCEND):]))


def _stage_cann_toolkit(ctx):
    home = os.path.join(ctx, "ascend-toolkit/latest")
    _write(os.path.join(ctx, "ascend-toolkit/set_env.sh"), TOOLKIT_SET_ENV)
    _write(os.path.join(home, "bin/atc"), ATC_WRAPPER)
    _copy("services/classifier/tests/acl_sim/acl.py", os.path.join(ctx, TOOLKIT_ACL[len(ASCEND):]))
    _copy("services/classifier/tests/fake_atc.py", os.path.join(home, "sim/fake_atc.py"))
    _copy("services/classifier/tests/acl_sim/acl.py", os.path.join(home, "sim/acl_sim/acl.py"))


def _stage_cann_tf(ctx):
    site = os.path.join(ctx, "Ascend/tfplugin/latest/python/site-packages")
    _write(os.path.join(ctx, "Ascend/nnae/set_env.sh"), NNAE_SET_ENV)
    _copy("docker/standins/npu_device.py", os.path.join(site, "npu_device.py"))
    _copy("model/tests/fakes/fake_npu_device.py", os.path.join(site, "fake_npu_device.py"))


# Stand-ins in build order: tag -> (Dockerfile, function staging its context, the stand-in it builds on).
STANDINS = {
    PYTHON_IMAGE: ("python.Dockerfile", None, None),
    TF_GPU_IMAGE: ("tensorflow-gpu.Dockerfile", None, PYTHON_IMAGE),
    ASCEND_INFER_IMAGE: ("cann-nnrt.Dockerfile", _stage_cann_nnrt, PYTHON_IMAGE),
    CANN_TOOLKIT_IMAGE: ("cann-toolkit.Dockerfile", _stage_cann_toolkit, PYTHON_IMAGE),
    CANN_TF_IMAGE: ("cann-tf.Dockerfile", _stage_cann_tf, TF_GPU_IMAGE),
}


def log(msg):
    sys.stderr.write("standins: %s\n" % msg)
    sys.stderr.flush()


def docker_build(dockerfile, context, tag, build_args=None):
    """`docker build`, classic builder (no registry access for a syntax image); output kept for errors."""
    cmd = [DOCKER, "build", "--network", "host", "-f", dockerfile, "-t", tag]
    for kv in sorted((build_args or {}).items()):
        cmd += ["--build-arg", "%s=%s" % kv]
    t0 = time.time()
    proc = subprocess.run(cmd + [context], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=dict(os.environ, DOCKER_BUILDKIT="0"))
    if proc.returncode != 0:
        out = proc.stdout.decode("utf-8", "replace")
        raise RuntimeError("docker build of %s failed (%s):\n%s" % (tag, " ".join(cmd), out[-6000:]))
    log("built %s in %.0f s" % (tag, time.time() - t0))


def build_base():
    subprocess.run([os.path.join(HERE, "make-base.sh")], check=True)


def build(names):
    build_base()
    built = set()
    for name in names:
        dockerfile, base = IMAGES[name]
        chain, tag = [], base
        while tag and tag not in built:   # each stand-in once, parents first
            chain.append(tag)
            tag = STANDINS[tag][2]
        with tempfile.TemporaryDirectory(prefix="standin-") as tmp:
            for tag in reversed(chain):
                file, stage, _ = STANDINS[tag]
                ctx = os.path.join(tmp, tag.replace("/", "_").replace(":", "_"))
                os.makedirs(ctx)
                if stage:
                    stage(ctx)
                docker_build(os.path.join(HERE, file), ctx, tag)
                built.add(tag)
        docker_build(os.path.join(ROOT, dockerfile), ROOT, "mbv3/%s:latest" % name, {"BASE_IMAGE": base})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(IMAGES), default=list(IMAGES))
    args = parser.parse_args(argv)
    build(args.only)


if __name__ == "__main__":
    main()
