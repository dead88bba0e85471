"""Log and progress lines go to stderr, flushed at once: stdout carries the results (JSON, bundle
paths, predictions) that scripts and `$(...)` capture."""
import os
import sys
import tempfile


def say(msg):
    print(msg, file=sys.stderr)
    sys.stderr.flush()


def format_duration(seconds):
    """HH:MM:SS, with a day count in front past 24 hours: the ETAs and durations of progress lines."""
    seconds = int(round(max(seconds, 0)))
    days, rest = divmod(seconds, 86400)
    text = "%02d:%02d:%02d" % (rest // 3600, rest % 3600 // 60, rest % 60)
    return ("%dd %s" % (days, text)) if days else text


VERBOSE = False   # the CLI's --verbose: TensorFlow's start-up and info lines on the terminal


def import_tensorflow(verbose=None):
    """TensorFlow, imported without its start-up lines on the terminal unless `verbose` (default:
    VERBOSE). Modules that import TensorFlow lazily call this first.

    TF_CPP_MIN_LOG_LEVEL quiets TensorFlow's C++ logs only once absl has initialised; the lines
    logged before that (oneDNN and CPU-feature notices) go straight to file descriptor 2 during
    the import, so fd 2 points at a temporary file for the import and is restored after it. The
    captured text is replayed when the import fails, so a broken installation still says why."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if verbose is None:
        verbose = VERBOSE
    if verbose:
        import tensorflow as tf
        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    captured = tempfile.TemporaryFile()
    try:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
    except BaseException:
        captured.seek(0)
        sys.stderr.write(captured.read().decode("utf-8", "replace"))
        sys.stderr.flush()
        raise
    finally:
        os.close(saved)
        captured.close()
    import logging
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf
