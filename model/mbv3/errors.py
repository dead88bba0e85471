"""Errors a user can act on. The CLI prints their message as one line and exits non-zero;
anything else is a bug and keeps its traceback."""
import re

# TensorFlow's file errors read `<path>; <strerror>`, sometimes wrapped in `{{function_node ...}}` and
# followed by ` [Op:SaveV2]`: the path is usually a temporary name, the strerror is the news.
_TF_FILE_ERROR = re.compile(r"^(?:\{\{[^}]*\}\} )?\S+; (?P<reason>[^;]+?)(?: \[Op:\w+\])?$")
# OpenVINO's messages open with where in its sources they were raised ("Exception from src/...:84:",
# "Check '...' failed at src/...:900:"); what went wrong comes after.
_SOURCE_LOCATION = re.compile(r"^(?:Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)$")


def first_line(err, default=None):
    """The first line of an error's message (TensorFlow's and ONNX Runtime's run to many lines), past
    OpenVINO's source locations; `default`, else the exception's class name, when the message is empty."""
    text = (getattr(err, "message", None) or str(err)).strip()
    if text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        said = [line for line in lines if not _SOURCE_LOCATION.match(line)]
        return (said or lines)[0]
    return default if default is not None else err.__class__.__name__


def file_reason(err):
    """Why a file operation failed, in a few words ("No space left on device"): an OSError's strerror,
    the strerror at the end of a TensorFlow file error, else the error's first line."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = first_line(err)
    match = _TF_FILE_ERROR.match(text)
    return match.group("reason") if match else text


class MbV3Error(Exception):
    """A problem with the user's input (paths, checkpoints, options), stated in one line."""


class CheckpointError(MbV3Error):
    pass


class BundleError(MbV3Error):
    pass


class WriteError(MbV3Error):
    """A file that could not be written (disk full, read-only, no permission), named with the reason."""


class ImageError(MbV3Error, ValueError):
    """The bytes are not an image the preprocessing can decode, or one it refuses (its structure,
    its size). Both transforms raise it, and the service answers it as 400 invalid_image."""


class ImageTooLarge(ImageError):
    """More pixels than the caller allows (decompression-bomb protection): 413 image_too_large."""
