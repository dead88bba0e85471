# STAND-IN for a CANN toolkit image of Ascend/cann-container-image (published as ascendai/cann and
# quay.io/ascend/cann; e.g. cann/8.2.rc1-310p-ubuntu22.04-py3.11/Dockerfile): the base of the 310P
# inference path and of the convert image (`make om`). It reproduces that Dockerfile's layout:
#   - /usr/local/Ascend/ascend-toolkit/{set_env.sh,latest}, with `atc` in latest/bin;
#   - the toolkit's environment as ENV (ASCEND_TOOLKIT_HOME, LD_LIBRARY_PATH, PYTHONPATH starting with
#     latest/python/site-packages, where pyACL's acl.so is, PATH with latest/bin, ASCEND_* paths),
#     and an ENTRYPOINT that sources set_env.sh before the command;
#   - root as the user and no HwHiAiUser account (that Dockerfile creates none).
# Behind that layout: the pyACL simulator (services/classifier/tests/acl_sim/acl.py) as acl.py in
# place of acl.so, and as `atc` the test stand-in services/classifier/tests/fake_atc.py, which checks
# the arguments `mbv3 om` passes and writes a simulated .om. Python is Debian's 3.11 in /usr/bin, not
# the image's 3.11.13 in /usr/local/python3.11.13; no driver, no kernels package, no NNAL.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG ORT_VERSION=1.32.0
# the same first layer as cann-nnrt.Dockerfile, so the engine builds it once for both stand-ins
RUN python3 -m pip install --no-cache-dir "onnxruntime==${ORT_VERSION}"
ENV ASCEND_TOOLKIT_HOME=/usr/local/Ascend/ascend-toolkit/latest
ENV LD_LIBRARY_PATH=/usr/local/Ascend/driver/lib64/common/:/usr/local/Ascend/driver/lib64/driver/:$LD_LIBRARY_PATH
ENV LD_LIBRARY_PATH=${ASCEND_TOOLKIT_HOME}/lib64:${ASCEND_TOOLKIT_HOME}/lib64/plugin/opskernel:${ASCEND_TOOLKIT_HOME}/lib64/plugin/nnengine:$LD_LIBRARY_PATH
ENV PYTHONPATH=${ASCEND_TOOLKIT_HOME}/python/site-packages:${ASCEND_TOOLKIT_HOME}/opp/built-in/op_impl/ai_core/tbe:$PYTHONPATH
ENV PATH=${ASCEND_TOOLKIT_HOME}/bin:${ASCEND_TOOLKIT_HOME}/compiler/ccec_compiler/bin:$PATH
ENV ASCEND_AICPU_PATH=${ASCEND_TOOLKIT_HOME} \
    ASCEND_OPP_PATH=${ASCEND_TOOLKIT_HOME}/opp \
    TOOLCHAIN_HOME=${ASCEND_TOOLKIT_HOME}/toolkit \
    ASCEND_HOME_PATH=${ASCEND_TOOLKIT_HOME}
COPY ascend-toolkit /usr/local/Ascend/ascend-toolkit
RUN chmod +x /usr/local/Ascend/ascend-toolkit/latest/bin/atc
SHELL ["/bin/bash", "-c"]
ENTRYPOINT ["/bin/bash", "-c", "source /usr/local/Ascend/ascend-toolkit/set_env.sh && exec \"$@\"", "--"]
CMD ["bash"]
