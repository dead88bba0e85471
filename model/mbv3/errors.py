"""Errors a user can act on. The CLI prints their message as one line and exits non-zero;
anything else is a bug and keeps its traceback."""


def first_line(err, default=None):
    """The first line of an error's message (TensorFlow's and ONNX Runtime's run to many lines);
    `default`, else the exception's class name, when the message is empty."""
    text = (getattr(err, "message", None) or str(err)).strip()
    if text:
        return text.splitlines()[0]
    return default if default is not None else err.__class__.__name__


class MbV3Error(Exception):
    """A problem with the user's input (paths, checkpoints, options), stated in one line."""


class CheckpointError(MbV3Error):
    pass


class BundleError(MbV3Error):
    pass
