# STAND-IN for a CANN inference runtime image (default tag ascendai/cann:8.0.0-310p-ubuntu22.04-py3.10),
# tagged with that name so docker/infer-ascend.Dockerfile builds unchanged. It reproduces the layout
# that Dockerfile relies on: /usr/local/Ascend/nnrt/set_env.sh putting pyACL's site-packages folder
# (nnrt/latest/pyACL/python/site-packages) on PYTHONPATH, python3 with pip, and the HwHiAiUser group.
# In place of pyACL that folder holds the pyACL simulator (services/classifier/tests/acl_sim), which
# runs the bundle's ONNX model with ONNX Runtime. Python is Debian's 3.11, not the image's 3.10.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG ORT_VERSION=1.32.0
RUN python3 -m pip install --no-cache-dir "onnxruntime==${ORT_VERSION}" \
    && groupadd --gid 1000 HwHiAiUser
COPY nnrt /usr/local/Ascend/nnrt
CMD ["bash"]
