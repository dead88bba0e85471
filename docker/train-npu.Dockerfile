# Fine-tuning on an Ascend 910 (CANN's TensorFlow 2.6.5 adapter, Python 3.7). ATC is not here: Huawei's
# training images carry nnae + tfplugin, not the toolkit; `make om` converts in the convert image.
# BASE_IMAGE: a CANN training image with the TF 2.x adapter (npu_device); the default tag is an
# assumption to check against the host's driver and CANN version.
# Pulling it needs a login first (docs/containers.md): docker login ascendhub.huawei.com.
ARG BASE_IMAGE=ascendhub.huawei.com/public-ascendhub/tensorflow-modelzoo:23.0.RC2-TF2.6.5-ubuntu18.04
FROM ${BASE_IMAGE}
# some revisions of that image end as a non-root user (hwMindX): install as root, run as 10001 below
USER root
# PYTHON: the interpreter the base image's TensorFlow and adapter are installed for. In Huawei's
# tensorflow-modelzoo image that is the apt Python 3.7 behind /usr/bin/python; `python3` (and so
# `python3 -m pip`) may be another interpreter there. pip, the `mbv3` command's shebang and
# npu-launch's rank-table helper all use this one; the build stops if TensorFlow is not importable by it.
ARG PYTHON=python
LABEL org.opencontainers.image.title="mbv3 training (Ascend 910, CANN TF adapter)" \
      org.opencontainers.image.description="MobileNetV3 fine-tuning with npu_device and ATC conversion; entrypoint mbv3" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MBV3_PYTHON=${PYTHON}
WORKDIR /app
# Python 3.7 there: ranges it can satisfy; the base image's TensorFlow and adapter stay.
COPY requirements/train-image.txt /app/requirements/
RUN "$PYTHON" -c "import sys, tensorflow as tf; print(sys.executable, sys.version.split()[0], 'TensorFlow', tf.__version__)" \
    && "$PYTHON" -m pip install --no-cache-dir -r /app/requirements/train-image.txt
COPY docker/ascend-entrypoint.sh /usr/local/bin/ascend-entrypoint
COPY docker/npu-launch.sh /usr/local/bin/npu-launch
COPY model/pyproject.toml model/README.md /app/model/
COPY model/mbv3 /app/model/mbv3
# Not root: uid 10001 whose group is HwHiAiUser (Huawei's images define it; the host's device nodes
# belong to it), with a home for CANN's logs ($HOME/ascend/log). The working directory is that home
# because TBE's kernel_meta and ATC's fusion_result.json are written into the current directory.
RUN "$PYTHON" -m pip install --no-cache-dir --no-deps /app/model \
    && useradd --no-log-init --uid 10001 --create-home --shell /bin/bash \
       --gid "$(getent group HwHiAiUser >/dev/null && echo HwHiAiUser || echo users)" mbv3
USER 10001
WORKDIR /home/mbv3
# npu-launch starts one `mbv3 train` per card when RANK_SIZE > 1; otherwise it just runs mbv3.
ENTRYPOINT ["/usr/local/bin/ascend-entrypoint", "/usr/local/bin/npu-launch", "mbv3"]
CMD ["--help"]
