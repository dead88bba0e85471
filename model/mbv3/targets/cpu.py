"""Any CPU: the default strategy, or MirroredStrategy over logical CPU devices (cpu_replicas > 1),
which is how tests exercise the multi-replica code path without GPUs."""
import tensorflow as tf

from .base import Target, multi_worker_cluster


class CpuTarget(Target):
    name = "cpu"

    def make_strategy(self):
        replicas = int(self.cfg.get("cpu_replicas") or 1)
        if multi_worker_cluster() or replicas <= 1:
            return super(CpuTarget, self).make_strategy()
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        devices = ["/cpu:%d" % i for i in range(replicas)]
        return tf.distribute.MirroredStrategy(devices)
