"""The bundle `make serve` runs, on any machine, even one that reaches nothing but package registries.

In order: the bundle or checkpoint the user named (named.py); else TF-slim's official ImageNet
checkpoint, downloaded once and accepted only if its contents are MobileNetV3-Large 1.0 with 1001
classes (official.py); else the digits demo, trained here with this package (demo.py) and announced
in a box, because it labels photos with digits and a service that silently did that would look
broken. Everything lands in a cache (cache.py) and is reused on the next run. TensorFlow is imported
only when something has to be read, trained or exported.
"""

from ..console import say
from ..errors import MbV3Error
from . import cache, demo, named, official


def resolve(model=None, cache_dir=None, official_url=None, log=say):
    """The bundle directory to serve. `model`: a bundle or a checkpoint (prefix or directory);
    `cache_dir`: default $MBV3_CACHE, else ~/.cache/mbv3; `official_url`: where the official
    checkpoint is fetched from (a mirror for sites without internet), default $MBV3_OFFICIAL_URL,
    else Google's."""
    root = cache.root(cache_dir)
    if model:
        return named.bundle(model, root, log)
    with cache.lock(root, log):
        try:
            return official.bundle(root, official.url(official_url), log)
        except MbV3Error as e:
            reason = str(e)
        log("no ImageNet checkpoint: %s" % reason)
        path = demo.bundle(root, log)
    log(demo.banner(reason, root))
    return path
