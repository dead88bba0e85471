# Training on NVIDIA GPUs: `make train-gpu` / `docker compose run train-gpu`.
ARG BASE_IMAGE=tensorflow/tensorflow:2.17.0-gpu
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="mbv3 training (NVIDIA GPU)" \
      org.opencontainers.image.description="MobileNetV3 training with tf.distribute, XLA and mixed precision; entrypoint mbv3" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The base image's TensorFlow stays: only the package's small dependencies are added.
COPY requirements/train-image.txt /app/requirements/
RUN python3 -m pip install --no-cache-dir -r /app/requirements/train-image.txt
COPY model/pyproject.toml model/README.md /app/model/
COPY model/mbv3 /app/model/mbv3
RUN python3 -m pip install --no-cache-dir --no-deps /app/model \
    && useradd --no-log-init --uid 10001 --create-home --shell /bin/bash mbv3
# Not root by default; `make train-gpu` runs it as TRAIN_USER (you) so RUNS stays yours.
USER 10001
ENTRYPOINT ["mbv3"]
CMD ["--help"]
