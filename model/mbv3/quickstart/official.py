"""TF-slim's official MobileNetV3-Large 1.0 ImageNet checkpoint: downloaded once, unpacked member by
member (nothing may land outside its folder), accepted only if every variable name and shape is the
one MobileNetV3-Large 1.0 with 1001 classes has, then exported once. Anything else is deleted, so the
next run downloads again rather than rejecting the same file forever.

MBV3_OFFICIAL_URL (or `mbv3 default-bundle --official-url`) points the download at a mirror, for a
site that reaches an internal file server but not Google's storage; a file:// URL works too."""

import os
import shutil
import tarfile

from ..console import import_tensorflow
from ..errors import MbV3Error
from . import cache

NAME = "v3-large_224_1.0_float"
URL = "https://storage.googleapis.com/mobilenet_v3/checkpoints/%s.tgz" % NAME
ARCH = ("large", 1.0, 1001)
CONNECT_TIMEOUT = 10.0  # seconds; an offline machine must fall through quickly


class DownloadError(MbV3Error):
    pass


class RejectedCheckpoint(MbV3Error):
    """The download is not the checkpoint we asked for; it is deleted and never used."""


def url(given=None):
    """The URL to fetch: `given`, else $MBV3_OFFICIAL_URL, else Google's."""
    return given or os.environ.get("MBV3_OFFICIAL_URL") or URL


def bundle(root, source_url, log):
    out = os.path.join(root, "bundles", "official-" + NAME)
    if cache.is_bundle(out):
        log("using the official ImageNet model, exported earlier: %s" % out)
        return out
    tarball = os.path.join(root, "downloads", NAME + ".tgz")
    if os.path.exists(tarball):
        log("using the downloaded %s" % tarball)
    else:
        log("downloading %s (once; cached in %s)" % (source_url, os.path.dirname(tarball)))
        download(source_url, tarball)
    unpacked = os.path.join(root, "official", NAME)
    try:
        extract(tarball, unpacked)
        prefix = check(unpacked)
    except RejectedCheckpoint:
        cache.remove(tarball)
        cache.remove(unpacked)
        raise
    log("%s holds MobileNetV3-Large 1.0, 1001 classes: exporting it once into %s" % (prefix, out))
    cache.export_into(prefix, out, log, name=NAME)
    return out


def download(source_url, dest):
    """Fetch source_url into dest (via dest.part, renamed when complete); DownloadError on any failure."""
    import socket
    from urllib.error import URLError
    from urllib.request import urlopen
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    part = "%s.part-%d" % (dest, os.getpid())
    try:
        with urlopen(source_url, timeout=CONNECT_TIMEOUT) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        os.replace(part, dest)
    except (URLError, socket.timeout, OSError, ValueError) as e:
        cache.remove(part)
        raise DownloadError("cannot download %s: %s" % (source_url, getattr(e, "reason", None) or e))
    except BaseException:
        cache.remove(part)
        raise
    return dest


def _safe_members(tar):
    """The archive's directories and regular files; anything that could write outside the target
    (absolute paths, `..`, links, devices) rejects the whole archive."""
    members = []
    for m in tar.getmembers():
        parts = m.name.replace("\\", "/").split("/")
        if m.name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise RejectedCheckpoint("archive member %r points outside its folder; refusing the archive" % m.name)
        if not (m.isdir() or m.isfile()):
            raise RejectedCheckpoint("archive member %r is a link or device, not a file; refusing the archive" % m.name)
        members.append(m)
    return members


def extract(tarball, dest):
    """Unpack tarball into dest (replaced), writing each checked member ourselves."""
    tmp = "%s.tmp-%d" % (dest, os.getpid())
    cache.remove(tmp)
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for m in _safe_members(tar):
                target = os.path.join(tmp, *[p for p in m.name.split("/") if p not in ("", ".")])
                if m.isdir():
                    if not os.path.isdir(target):
                        os.makedirs(target)
                    continue
                if not os.path.isdir(os.path.dirname(target)):
                    os.makedirs(os.path.dirname(target))
                src = tar.extractfile(m)
                with open(target, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
        cache.remove(dest)
        os.rename(tmp, dest)
    except (tarfile.TarError, EOFError, OSError) as e:
        cache.remove(tmp)
        raise RejectedCheckpoint("%s is not a readable .tgz archive: %s" % (tarball, e))
    except BaseException:
        cache.remove(tmp)
        raise
    return dest


def find_checkpoint(root, quiet=False):
    """The checkpoint prefix in a folder tree (an unpacked archive): the `ema/` one when there is one
    (the official tarball also holds `pristine/` raw weights), else the only one; quiet: None, not
    an error, when there is none or several."""
    indexes = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        indexes.extend(os.path.join(folder, f)[:-len(".index")] for f in sorted(files) if f.endswith(".index"))
    if not indexes:
        if quiet:
            return None
        raise RejectedCheckpoint("the archive holds no checkpoint (no *.index file)")
    ema = [p for p in indexes if "ema" in os.path.relpath(p, root).split(os.sep)[:-1]]
    candidates = ema or indexes
    folders = sorted(set(os.path.dirname(p) for p in candidates))
    if len(folders) > 1:
        if quiet:
            return None
        raise RejectedCheckpoint("the archive holds checkpoints in several folders (%s); expected one under ema/"
                                 % ", ".join(os.path.relpath(f, root) for f in folders))
    import_tensorflow()   # quietly, before the TensorFlow module below
    from .. import checkpoint
    try:
        return checkpoint.resolve_prefix(folders[0])
    except MbV3Error:
        return sorted(candidates)[-1]


def check(root):
    """The prefix of the official checkpoint under root, checked by its contents: every variable
    name and shape of MobileNetV3-Large 1.0 with 1001 classes, nothing else."""
    import_tensorflow()   # quietly, before the TensorFlow module below
    from .. import checkpoint, specs
    prefix = find_checkpoint(root)
    try:
        shapes = checkpoint.Reader(prefix).shapes
        arch = checkpoint.detect_architecture(shapes)
    except MbV3Error as e:
        raise RejectedCheckpoint("%s is not the official checkpoint: %s" % (prefix, e))
    if (arch.variant, arch.multiplier, arch.num_classes) != ARCH:
        raise RejectedCheckpoint("%s holds MobileNetV3 %s, not the official large 1.0 with 1001 classes"
                                 % (prefix, arch.describe()))
    expected = specs.variable_specs(specs.resolve(*ARCH[:2]), ARCH[2])
    wrong = sorted(n for n, s in expected.items() if shapes.get(n) != tuple(s.shape))
    if wrong:
        raise RejectedCheckpoint("%s lacks %d expected variables (first: %s)" % (prefix, len(wrong), wrong[0]))
    return prefix
