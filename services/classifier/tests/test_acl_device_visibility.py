"""Start-up's account of how the Ascend chips reached the container (acl_runtime.device_visibility),
on a fake /dev: the Ascend Docker Runtime's way (ASCEND_VISIBLE_DEVICES, which Huawei's device plugin
sets with -useAscendDocker=true) and the device plugin's own mounts (-useAscendDocker=false), and,
when no chip is there, which of the two is missing instead of "0 devices"."""
from classifier.backends.acl_runtime import chip_nodes, device_visibility


def fake_dev(tmp_path, *names):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in names:
        (dev / name).write_text("")
    return str(dev)


SHARED = ("davinci_manager", "devmm_svm", "hisi_hdc")


def test_chips_mounted_by_the_runtime_name_the_variable(tmp_path):
    dev = fake_dev(tmp_path, "davinci2", "davinci10", *SHARED)
    assert chip_nodes(dev) == [2, 10]   # davinci_manager is no chip
    chips, text = device_visibility({"ASCEND_VISIBLE_DEVICES": "2,10"}, dev)
    assert chips == [2, 10]
    assert "ASCEND_VISIBLE_DEVICES=2,10: mounted by the Ascend Docker Runtime" in text and "missing" not in text


def test_chips_mounted_by_the_plugin_say_so(tmp_path):
    dev = fake_dev(tmp_path, "davinci0", "davinci_manager")
    chips, text = device_visibility({}, dev)
    assert chips == [0]
    assert "-useAscendDocker=false" in text
    assert "also missing %s/devmm_svm, %s/hisi_hdc" % (dev, dev) in text


def test_visible_devices_without_nodes_blame_the_missing_runtime(tmp_path):
    dev = fake_dev(tmp_path)
    chips, text = device_visibility({"ASCEND_VISIBLE_DEVICES": "0-3"}, dev)
    assert chips == []
    assert text.startswith("ASCEND_VISIBLE_DEVICES=0-3 is set but no %s/davinci<N>" % dev)
    assert "The Ascend Docker Runtime is not installed on this node" in text
    assert "-useAscendDocker=false" in text


def test_nothing_at_all_says_no_chip_was_handed_over(tmp_path):
    chips, text = device_visibility({}, fake_dev(tmp_path, *SHARED))
    assert chips == []
    assert "no chip was handed to it" in text and "huawei.com/Ascend310P" in text
    assert device_visibility({}, str(tmp_path / "absent"))[0] == []


def test_the_plans_no_device_error_says_what_is_missing(tmp_path):
    import pytest

    from classifier import backends

    dev = fake_dev(tmp_path, *SHARED)

    class NoChip(backends.System):
        installed = staticmethod(lambda package: True)
        count_devices = staticmethod(lambda: 0)
        visibility = staticmethod(lambda: device_visibility({"ASCEND_VISIBLE_DEVICES": "0"}, dev))

    def plan(backend):
        return backends.plan(backend=backend, device_ids="all", cpu_workers=1, threads=0, max_batch=8, cpus=2,
                             system=NoChip)
    with pytest.raises(backends.BackendError) as raised:
        plan("acl")
    assert str(raised.value).startswith("DEVICE_IDS=all: pyACL sees no Ascend device: ASCEND_VISIBLE_DEVICES=0 is "
                                        "set but no %s/davinci<N>" % dev)
    auto = plan("auto")   # auto: the CPU serves, saying why
    assert not auto.on_devices and "ASCEND_VISIBLE_DEVICES=0 is set but no" in auto.why
