"""Where a checkpoint is, from its path alone (no TensorFlow): the CLI checks a user's path with it
before loading TensorFlow, and mbv3.checkpoint resolves paths through it."""
import glob
import os

from .errors import CheckpointError

STATE_FILE = "checkpoint"  # TF1's text state file: the latest checkpoint and the ones kept


def locate(path):
    """(directory, None) for a directory holding checkpoint files, or (None, prefix) for a
    checkpoint prefix given as `<prefix>` or `<prefix>.index`; CheckpointError when the path is
    neither. Whether the files can be read is mbv3.checkpoint's to say."""
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        if not glob.glob(os.path.join(glob.escape(path), "*.index")) \
                and not os.path.exists(os.path.join(path, STATE_FILE)):
            raise CheckpointError("no checkpoint found in directory %s" % path)
        return path, None
    if os.path.exists(path + ".index"):
        return None, path
    if path.endswith(".index") and os.path.exists(path):
        return None, path[:-len(".index")]
    raise CheckpointError("no checkpoint at %s (expected %s.index or a directory)" % (path, path))
