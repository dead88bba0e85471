"""`make serve MODEL=...`: a bundle is served as it is; a checkpoint (a prefix, a run directory, or
the unpacked official tarball's folder) is exported once into the cache."""

import hashlib
import os

from ..bundle import METADATA, load as load_bundle
from ..console import import_tensorflow
from ..errors import MbV3Error
from . import cache
from .official import find_checkpoint


def bundle(model, root, log):
    path = os.path.abspath(os.path.expanduser(model))
    if cache.is_bundle(path):
        load_bundle(path)  # a foreign or broken model.json fails here, not in the service
        log("using bundle %s" % path)
        return path
    import_tensorflow()   # quietly, before the TensorFlow module below
    from .. import checkpoint
    try:
        prefix = checkpoint.resolve_prefix(path)
    except MbV3Error as e:
        prefix = find_checkpoint(path, quiet=True) if os.path.isdir(path) else None  # e.g. the unpacked tarball
        if not prefix:
            raise MbV3Error("MODEL=%s is neither a model bundle (no %s) nor a checkpoint: %s"
                            % (model, METADATA, e))
    out = os.path.join(root, "bundles", checkpoint_key(prefix))
    with cache.lock(root, log):
        if cache.is_bundle(out):
            log("using %s, exported earlier from %s" % (out, prefix))
            return out
        log("exporting checkpoint %s once into %s" % (prefix, out))
        cache.export_into(prefix, out, log)
    return out


def checkpoint_key(prefix):
    """Cache name for a checkpoint: its absolute prefix and index mtime, so a rewritten one re-exports."""
    prefix = os.path.abspath(prefix)
    stamp = os.stat(prefix + ".index").st_mtime_ns
    digest = hashlib.sha256(("%s\n%d" % (prefix, stamp)).encode("utf-8")).hexdigest()[:16]
    return "ckpt-%s-%s" % (os.path.basename(prefix), digest)
