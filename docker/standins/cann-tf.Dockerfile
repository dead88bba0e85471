# STAND-IN for a CANN training image with the TF 2.x adapter (default tag
# ascendhub.huawei.com/public-ascendhub/tensorflow-modelzoo:23.0.RC2-TF2.6.5-ubuntu18.04), tagged with
# that name so docker/train-npu.Dockerfile builds unchanged. It reproduces the layout the Dockerfile
# and its entrypoint rely on: /usr/local/Ascend/ascend-toolkit/set_env.sh, which puts `npu_device` on
# PYTHONPATH and `atc` on PATH, and the HwHiAiUser group (gid 1000, as on Huawei's images). Everything
# behind that layout is a stand-in:
#   - TensorFlow is the CPU wheel of the TF stand-in (2.17, Python 3.11), not CANN's TF 2.6.5 on 3.7;
#   - npu_device is mbv3's recording test double (model/tests/fakes/fake_npu_device.py), not the adapter;
#   - atc is the test stand-in (services/classifier/tests/fake_atc.py) that writes a simulated .om.
ARG TF_IMAGE=tensorflow/tensorflow:2.17.0-gpu
FROM ${TF_IMAGE}
COPY ascend-toolkit /usr/local/Ascend/ascend-toolkit
RUN chmod +x /usr/local/Ascend/ascend-toolkit/latest/bin/atc \
    && groupadd --gid 1000 HwHiAiUser
CMD ["bash"]
