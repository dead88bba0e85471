# STAND-IN for Huawei's nnrt inference image, `ascend-infer` (Ascend/ascend-docker-image,
# ascend-infer/Dockerfile): the base of the Ascend 310 (Atlas 300I) path. It reproduces that
# Dockerfile's layout, which docker/infer-ascend.Dockerfile must cope with:
#   - the nnrt package under /usr/local/Ascend/nnrt, with set_env.sh;
#   - ENV, not a sourced script: LD_LIBRARY_PATH (driver + nnrt/latest/acllib/lib64), ASCEND_AICPU_PATH,
#     and PYTHONPATH ending in nnrt/latest/pyACL/python/site-packages/acl, the folder holding acl.so;
#   - user and group HwHiAiUser (uid/gid 1000) and `USER HwHiAiUser` as its last line.
# Behind that layout: the pyACL simulator (services/classifier/tests/acl_sim/acl.py) stands in for
# acl.so and runs the bundle's ONNX model with ONNX Runtime. Python is Debian's 3.11 with pip; the
# ascendbase-infer images that Dockerfile builds on (ubuntu18.04, centos7.6) install no Python at all.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG ORT_VERSION=1.32.0
# the same first layer as cann-toolkit.Dockerfile, so the engine builds it once for both stand-ins
RUN python3 -m pip install --no-cache-dir "onnxruntime==${ORT_VERSION}"
ENV LD_LIBRARY_PATH=/usr/local/Ascend/driver/lib64:/usr/local/Ascend/driver/lib64/common:/usr/local/Ascend/driver/lib64/driver:/usr/local/Ascend/nnrt/latest/acllib/lib64:$LD_LIBRARY_PATH
RUN groupadd HwHiAiUser -g 1000 \
    && useradd -d /home/HwHiAiUser -u 1000 -g 1000 -m -s /bin/bash HwHiAiUser
COPY nnrt /usr/local/Ascend/nnrt
ENV ASCEND_AICPU_PATH=/usr/local/Ascend/nnrt/latest \
    PYTHONPATH=$PYTHONPATH:/usr/local/Ascend/nnrt/latest/pyACL/python/site-packages/acl
USER HwHiAiUser
CMD ["bash"]
