# The classifier on an Ascend 310/310P through pyACL: `docker compose up infer`.
# BASE_IMAGE follows the serving chip (the Makefile's ASCEND_CHIP table, docs/containers.md): for a 310,
# Huawei's nnrt inference image `ascend-infer`, built locally from Ascend/ascend-docker-image (the default
# here); for a 310P3, Ascend/cann-container-image's ascendai/cann:8.2.rc1-310p-ubuntu22.04-py3.11. Either
# needs Python 3.8+ and pyACL, and a CANN version the host's driver supports.
ARG BASE_IMAGE=ascend-infer:latest
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="mbv3 classifier (Ascend 310, pyACL)" \
      org.opencontainers.image.description="MobileNetV3 HTTP classifier serving an ATC-built .om through pyACL" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# ascend-infer (the nnrt base) ends with `USER HwHiAiUser`: the installs below need root.
USER root
WORKDIR /app
# No ONNX Runtime and no TensorFlow: pyACL comes from the base image (set_env.sh puts it on PYTHONPATH).
# Ranges, not the CPU image's pins: the base image's Python decides; numpy < 2 for CANN.
COPY requirements/service-ascend.txt /app/requirements/
RUN python3 -m pip install --no-cache-dir -r /app/requirements/service-ascend.txt
COPY docker/ascend-entrypoint.sh /usr/local/bin/ascend-entrypoint
COPY model/pyproject.toml model/README.md /app/model/
COPY model/mbv3 /app/model/mbv3
COPY services/classifier /app/services/classifier
RUN python3 -m pip install --no-cache-dir --no-deps /app/model /app/services/classifier \
    && useradd --system --uid 10001 --no-create-home --groups "$(getent group HwHiAiUser >/dev/null && echo HwHiAiUser || echo users)" classifier
USER 10001
ENV HOST=0.0.0.0 PORT=8000 MODEL_DIR=/models/bundle BACKEND=acl
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/usr/local/bin/ascend-entrypoint"]
CMD ["python3", "-m", "classifier"]
