# The classifier on any CPU through ONNX Runtime: `docker compose up infer-cpu`.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="mbv3 classifier (CPU, ONNX Runtime)" \
      org.opencontainers.image.description="MobileNetV3 HTTP classifier: POST /classify, KServe v2; serves an mbv3 model bundle" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Dependencies first: editing the code does not re-run this layer.
COPY requirements/service-base.txt requirements/service.txt /app/requirements/
RUN pip install --no-cache-dir -r /app/requirements/service.txt
COPY model/pyproject.toml model/README.md /app/model/
COPY model/mbv3 /app/model/mbv3
COPY services/classifier /app/services/classifier
RUN pip install --no-cache-dir --no-deps /app/model /app/services/classifier \
    && useradd --system --uid 10001 --no-create-home classifier
USER 10001
ENV HOST=0.0.0.0 PORT=8000 MODEL_DIR=/models/bundle BACKEND=onnxruntime
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]
CMD ["python", "-m", "classifier"]
