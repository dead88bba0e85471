"""Files a crash must never leave half-written (checkpoint state, configs, dataset and bundle
metadata): written to a temporary sibling `<name>.tmp-<pid>`, flushed to disk, then renamed over the
target. A process killed in between leaves its temporary behind; remove_temporaries() clears those
when the next run starts, matching our own names only."""
import io
import os
import re

from .errors import MbV3Error, WriteError, file_reason

_TEMPORARY = re.compile(r"^(?P<target>.+)\.tmp-\d+$")


def is_temporary(name, targets=None):
    """Whether a file name is one of write_bytes()'s temporaries (of one of `targets`, when given)."""
    match = _TEMPORARY.match(name)
    return bool(match) and (targets is None or match.group("target") in targets)


def write_bytes(path, data):
    """Replace `path` by `data` atomically; a WriteError names the path and the reason (a full disk,
    no permission), and leaves the old file as it was and no temporary behind."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with io.open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError("cannot write %s: %s" % (path, file_reason(e)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path, text):
    return write_bytes(path, text.encode("utf-8"))


def copy(source, path):
    """Copy a small file atomically (write_bytes of its contents)."""
    try:
        with io.open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise MbV3Error("cannot read %s: %s" % (source, file_reason(e)))
    return write_bytes(path, data)


def remove_temporaries(directory, is_ours):
    """Remove the files in `directory` whose names `is_ours(name)` claims (temporaries of saves that
    were killed); returns their names, sorted."""
    def regular_file(name):
        path = os.path.join(directory, name)
        return os.path.isfile(path) and not os.path.islink(path)
    try:
        names = sorted(n for n in os.listdir(directory) if is_ours(n) and regular_file(n))
    except OSError as e:
        raise WriteError("cannot list %s: %s" % (directory, file_reason(e)))
    for name in names:
        path = os.path.join(directory, name)
        try:
            os.remove(path)
        except OSError as e:
            raise WriteError("cannot remove stale temporary file %s: %s" % (path, file_reason(e)))
    return names
