"""The bundle `make serve` runs, on any machine, even one that reaches nothing but package registries.

In order: the bundle or checkpoint the user named; else TF-slim's official ImageNet checkpoint,
downloaded once and accepted only if its contents are MobileNetV3-Large 1.0 with 1001 classes;
else the digits demo, trained here with this package. The demo is announced in a box, because
it labels photos with digits and a service that silently did that would look broken.
Everything lands in a cache (MBV3_CACHE, default ~/.cache/mbv3) and is reused on the next run;
a bundle counts as done once its model.json exists (export writes bundles atomically).
TensorFlow is imported only when something has to be read, trained or exported.
"""
from __future__ import absolute_import, division, print_function

import contextlib
import hashlib
import os
import shutil
import tarfile
import textwrap

from .console import say
from . import bundle as bundle_mod
from .errors import MbV3Error

OFFICIAL_NAME = "v3-large_224_1.0_float"
OFFICIAL_URL = "https://storage.googleapis.com/mobilenet_v3/checkpoints/%s.tgz" % OFFICIAL_NAME
OFFICIAL_ARCH = ("large", 1.0, 1001)
CONNECT_TIMEOUT = 10.0  # seconds; an offline machine must fall through quickly
DEMO_NAME = "mbv3-digits-demo"
DEMO_RECIPE = "digits-cpu"
DEMO_IMAGE_SIZE = 64   # the image files written; the model's input size is the recipe's data.image_size


class DownloadError(MbV3Error):
    pass


class RejectedCheckpoint(MbV3Error):
    """The download is not the checkpoint we asked for; it is deleted and never used."""


def cache_root(cache_dir=None):
    return os.path.abspath(os.path.expanduser(cache_dir or os.environ.get("MBV3_CACHE") or "~/.cache/mbv3"))


def official_url():
    return os.environ.get("MBV3_OFFICIAL_URL") or OFFICIAL_URL


def _is_bundle(path):
    return os.path.isfile(os.path.join(path, bundle_mod.METADATA))


def resolve(model=None, cache_dir=None, log=say, url=None, train_fn=None):
    """The bundle directory to serve. `model`: a bundle or a checkpoint (prefix or directory);
    `train_fn(data_dir, model_dir, log)` replaces the demo's training (tests)."""
    cache = cache_root(cache_dir)
    if model:
        return _named(model, cache, log)
    with _cache_lock(cache, log):
        try:
            return _official_bundle(cache, url or official_url(), log)
        except MbV3Error as e:
            reason = str(e)
        log("no ImageNet checkpoint: %s" % reason)
        path = _demo_bundle(cache, train_fn=train_fn, log=log)
    log(banner(reason, cache))
    return path


@contextlib.contextmanager
def _cache_lock(cache, log):
    """One process at a time downloads, trains or exports into a cache; a second one (two `make serve`
    at once) waits and then reuses the first one's bundle."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    try:
        if not os.path.isdir(cache):
            os.makedirs(cache)
        f = open(os.path.join(cache, ".lock"), "a")
    except OSError as e:
        raise MbV3Error("cannot use the cache %s: %s (choose another with MBV3_CACHE or --cache)" % (cache, e.strerror or e))
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("waiting for another process preparing a model in %s" % cache)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- a bundle or checkpoint the user named ---------------------------------------------------

def _named(model, cache, log):
    path = os.path.abspath(os.path.expanduser(model))
    if _is_bundle(path):
        bundle_mod.load(path)  # a foreign or broken model.json fails here, not in the service
        log("using bundle %s" % path)
        return path
    from . import checkpoint
    try:
        prefix = checkpoint.resolve_prefix(path)
    except MbV3Error as e:
        prefix = _find_checkpoint(path, quiet=True) if os.path.isdir(path) else None  # e.g. the unpacked tarball
        if not prefix:
            raise MbV3Error("MODEL=%s is neither a model bundle (no %s) nor a checkpoint: %s"
                            % (model, bundle_mod.METADATA, e))
    out = os.path.join(cache, "bundles", _checkpoint_key(prefix))
    with _cache_lock(cache, log):
        if _is_bundle(out):
            log("using %s, exported earlier from %s" % (out, prefix))
            return out
        log("exporting checkpoint %s once into %s" % (prefix, out))
        _export(prefix, out, log)
    return out


def _checkpoint_key(prefix):
    """Cache name for a checkpoint: its absolute prefix and index mtime, so a rewritten one re-exports."""
    prefix = os.path.abspath(prefix)
    stamp = os.stat(prefix + ".index").st_mtime_ns
    digest = hashlib.sha256(("%s\n%d" % (prefix, stamp)).encode("utf-8")).hexdigest()[:16]
    return "ckpt-%s-%s" % (os.path.basename(prefix), digest)


def _export(prefix, out, log, **kwargs):
    from . import export
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    export.export(prefix, out, log=log, **kwargs)


# --- TF-slim's official ImageNet checkpoint --------------------------------------------------

def _official_bundle(cache, url, log):
    out = os.path.join(cache, "bundles", "official-" + OFFICIAL_NAME)
    if _is_bundle(out):
        log("using the official ImageNet model, exported earlier: %s" % out)
        return out
    tarball = os.path.join(cache, "downloads", OFFICIAL_NAME + ".tgz")
    if os.path.exists(tarball):
        log("using the downloaded %s" % tarball)
    else:
        log("downloading %s (once; cached in %s)" % (url, os.path.dirname(tarball)))
        _download(url, tarball)
    unpacked = os.path.join(cache, "official", OFFICIAL_NAME)
    try:
        _extract(tarball, unpacked)
        prefix = _check_official(unpacked)
    except RejectedCheckpoint:
        _remove(tarball)  # the next run downloads again rather than rejecting the same file forever
        _remove(unpacked)
        raise
    log("%s holds MobileNetV3-Large 1.0, 1001 classes: exporting it once into %s" % (prefix, out))
    _export(prefix, out, log, name=OFFICIAL_NAME)
    return out


def _download(url, dest):
    """Fetch url into dest (via dest.part, renamed when complete); DownloadError on any failure."""
    import socket
    from urllib.error import URLError
    from urllib.request import urlopen
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    part = "%s.part-%d" % (dest, os.getpid())
    try:
        with urlopen(url, timeout=CONNECT_TIMEOUT) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        os.replace(part, dest)
    except (URLError, socket.timeout, OSError, ValueError) as e:
        _remove(part)
        raise DownloadError("cannot download %s: %s" % (url, getattr(e, "reason", None) or e))
    except BaseException:
        _remove(part)
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


def _extract(tarball, dest):
    """Unpack tarball into dest (replaced), writing each checked member ourselves."""
    tmp = "%s.tmp-%d" % (dest, os.getpid())
    _remove(tmp)
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
        _remove(dest)
        os.rename(tmp, dest)
    except (tarfile.TarError, EOFError, OSError) as e:
        _remove(tmp)
        raise RejectedCheckpoint("%s is not a readable .tgz archive: %s" % (tarball, e))
    except BaseException:
        _remove(tmp)
        raise
    return dest


def _find_checkpoint(root, quiet=False):
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
    from . import checkpoint
    try:
        return checkpoint.resolve_prefix(folders[0])
    except MbV3Error:
        return sorted(candidates)[-1]


def _check_official(root):
    """The prefix of the official checkpoint under root, checked by its contents: every variable
    name and shape of MobileNetV3-Large 1.0 with 1001 classes, nothing else."""
    from . import checkpoint, net
    prefix = _find_checkpoint(root)
    try:
        shapes = checkpoint.Reader(prefix).shapes
        arch = checkpoint.detect_architecture(shapes)
    except MbV3Error as e:
        raise RejectedCheckpoint("%s is not the official checkpoint: %s" % (prefix, e))
    if (arch.variant, arch.multiplier, arch.num_classes) != OFFICIAL_ARCH:
        raise RejectedCheckpoint("%s holds MobileNetV3 %s, not the official large 1.0 with 1001 classes"
                                 % (prefix, arch.describe()))
    specs = net.variable_specs(net.resolve(*OFFICIAL_ARCH[:2]), OFFICIAL_ARCH[2])
    wrong = sorted(n for n, s in specs.items() if shapes.get(n) != tuple(s.shape))
    if wrong:
        raise RejectedCheckpoint("%s lacks %d expected variables (first: %s)" % (prefix, len(wrong), wrong[0]))
    return prefix


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


# --- the digits demo -------------------------------------------------------------------------

def _train_digits(data_dir, model_dir, log):
    """What `make demo` trains: the digits-cpu recipe (resumes an interrupted run)."""
    from . import train
    summary = train.train(DEMO_RECIPE, data_dir, model_dir, log=log)
    if summary["stopped_by_signal"]:
        raise MbV3Error("demo training stopped by signal %d at step %d; rerun to resume"
                        % (summary["stopped_by_signal"], summary["step"]))


def _demo_bundle(cache, train_fn=None, log=say):
    """The digits demo bundle: images -> TFRecords -> train -> export, each step resumable."""
    out = os.path.join(cache, "bundles", "demo-digits")
    if _is_bundle(out):
        log("using the digits demo bundle trained earlier: %s" % out)
        return out
    from . import data, digits
    work = os.path.join(cache, "demo")
    images, records, run = (os.path.join(work, n) for n in ("images", "data", "run"))
    log("training the digits DEMO model once (1-2 minutes on 2 cores) in %s" % work)
    digits.write_digits_folder(images, size=DEMO_IMAGE_SIZE)
    data.build(images, records, val_split=0.2, log=log)
    (train_fn or _train_digits)(records, run, log)
    _export(run, out, log, name=DEMO_NAME)   # the size and preprocessing are the run's (its config.yaml)
    return out


def banner(reason, cache=None):
    """The boxed notice that the demo model is being served, with the way to the real one."""
    tgz = OFFICIAL_NAME + ".tgz"
    paragraphs = [
        "THIS IS THE DEMO DIGITS MODEL, NOT AN IMAGENET CLASSIFIER.",
        "It is a MobileNetV3-Small trained here on scikit-learn's 8x8 handwritten digits: every "
        "image, photo or not, gets one of the labels 0-9.",
        "Why: %s" % reason,
        "To serve the real ImageNet model (TF-slim %s, 1001 classes), on a machine with internet:" % OFFICIAL_NAME,
    ]
    commands = [
        "  curl -LO %s" % OFFICIAL_URL,
        "then copy %s here and run:" % tgz,
        "  tar xzf %s" % tgz,
        "  make serve MODEL=%s/ema" % OFFICIAL_NAME,
    ]
    if cache:
        commands.append("(or put %s in %s and run make serve again)" % (tgz, os.path.join(cache, "downloads")))
    width = max([76] + [len(line) for line in commands])
    lines = []
    for p in paragraphs:
        lines.extend(textwrap.wrap(p, width) + [""])
    lines.extend(commands)
    rule = "+" + "-" * (width + 4) + "+"
    return "\n".join(["", rule] + ["|  %s  |" % line.ljust(width) for line in lines] + [rule, ""])
