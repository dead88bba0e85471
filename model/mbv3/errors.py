"""Errors a user can act on. The CLI prints their message as one line and exits non-zero;
anything else is a bug and keeps its traceback."""


class MbV3Error(Exception):
    """A problem with the user's input (paths, checkpoints, options), stated in one line."""


class CheckpointError(MbV3Error):
    pass


class BundleError(MbV3Error):
    pass
