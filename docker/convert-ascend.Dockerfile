# ATC conversion for `make om`: a bundle's frozen graph -> model.om for the chip that will serve it.
# BASE_IMAGE: a CANN toolkit image of Ascend/cann-container-image (the toolkit has `atc`; Huawei's
# training and nnrt inference images do not). Those images set the toolkit's environment as ENV, so
# `atc` is on PATH without sourcing anything; the entrypoint sources set_env.sh anyway, for a base
# that does not. Conversion is offline: no card, no driver, no npu-smi, so `mbv3 om` builds for
# --soc-version (make om's SOC_VERSION) or mbv3's default, never for a chip it detects.
ARG BASE_IMAGE=ascendai/cann:8.2.rc1-310p-ubuntu22.04-py3.11
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="mbv3 convert (CANN toolkit ATC)" \
      org.opencontainers.image.description="MobileNetV3 bundle -> Ascend .om with ATC; entrypoint mbv3" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
USER root
WORKDIR /app
# mbv3 om needs numpy (the base's, which CANN's own Python packages use), PyYAML and Pillow.
COPY requirements/train-image.txt /app/requirements/
RUN python3 -m pip install --no-cache-dir -r /app/requirements/train-image.txt
COPY docker/ascend-entrypoint.sh /usr/local/bin/ascend-entrypoint
COPY model/pyproject.toml model/README.md /app/model/
COPY model/mbv3 /app/model/mbv3
RUN python3 -m pip install --no-cache-dir --no-deps /app/model \
    && useradd --no-log-init --uid 10001 --no-create-home --shell /bin/bash mbv3
USER 10001
# ATC writes fusion_result.json and kernel_meta/ into the working directory and its logs under
# $HOME/ascend/log: both in /tmp, which any --user can write (make om runs as the bundle's owner).
ENV HOME=/tmp
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/ascend-entrypoint", "mbv3"]
CMD ["om", "--help"]
