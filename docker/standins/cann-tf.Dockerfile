# STAND-IN for Huawei's TensorFlow training image (default tag
# ascendhub.huawei.com/public-ascendhub/tensorflow-modelzoo:23.0.RC2-TF2.6.5-ubuntu18.04), tagged with
# that name so docker/train-npu.Dockerfile builds unchanged. Its Dockerfile (Ascend/ascend-docker-image,
# Dockerfile/latest/modelzoo/ascend-tensorflow-modelzoo/, with install_ascend_pkgs.sh) installs the nnae
# and tfplugin packages, not the toolkit: there is no `atc` in it, and none here (conversion runs in
# the convert image). It reproduces that layout: /usr/local/Ascend/nnae/set_env.sh, the TF adapter
# under /usr/local/Ascend/tfplugin put on PYTHONPATH by ENV, and the HwHiAiUser group (gid 1000).
# Everything behind that layout is a stand-in:
#   - TensorFlow is the CPU wheel of the TF stand-in (2.17, Python 3.11), not CANN's TF 2.6.5 on 3.7;
#   - npu_device is mbv3's recording test double (model/tests/fakes/fake_npu_device.py), not the adapter.
# Not reproduced: the image's own Python 3.7 (apt's python3.7 with /usr/bin/python pointing to it in
# one version of that Dockerfile, a source build in /usr/local/python3.7.5 in another) and the
# `USER hwMindX` the later version ends with.
ARG TF_IMAGE=tensorflow/tensorflow:2.17.0-gpu
FROM ${TF_IMAGE}
COPY Ascend /usr/local/Ascend
ENV PYTHONPATH=/usr/local/Ascend/tfplugin/latest/python/site-packages:$PYTHONPATH
RUN groupadd --gid 1000 HwHiAiUser
CMD ["bash"]
