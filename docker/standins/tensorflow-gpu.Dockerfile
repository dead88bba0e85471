# STAND-IN for tensorflow/tensorflow:2.17.0-gpu, tagged with that name so docker/train-gpu.Dockerfile
# builds unchanged. Same TensorFlow version and Python minor version, but the CPU wheel: no CUDA,
# no cuDNN, no GPU. It proves the image builds and the package trains with this TensorFlow; it
# cannot prove anything about GPUs, XLA on a GPU or mixed precision on tensor cores.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG TF_VERSION=2.17.0
RUN python3 -m pip install --no-cache-dir "tensorflow-cpu==${TF_VERSION}"
CMD ["bash"]
