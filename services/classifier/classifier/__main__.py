"""`python -m classifier`: settings from the environment, then uvicorn. A bad setting or a missing
bundle stops start-up with one line; SIGTERM drains in-flight requests before the process exits."""
from __future__ import annotations

import logging
import signal
import sys

from mbv3.errors import MbV3Error

from . import settings as settings_mod


def main(argv=None):
    try:
        settings = settings_mod.load()
    except settings_mod.SettingsError as e:
        print("classifier: error: %s" % e, file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.LOG_LEVEL.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app import create_app
    try:
        app = create_app(settings)
    except MbV3Error as e:
        print("classifier: error: MODEL_DIR=%s: %s" % (settings.MODEL_DIR, e), file=sys.stderr)
        return 2
    except settings_mod.SettingsError as e:   # a setting only start-up can check (DEVICE_IDS=all)
        print("classifier: error: %s" % e, file=sys.stderr)
        return 2
    import uvicorn

    from . import transport
    try:
        config, parser = transport.server_config(app, settings)
    except ImportError as e:
        print("classifier: error: %s" % e, file=sys.stderr)
        return 2
    logging.getLogger("classifier").info("HTTP parser: %s (HTTP_PARSER=%s)", parser, settings.HTTP_PARSER)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal with the handlers it found at start.
    # Finding these, the process ends with a normal exit (status 0, atexit handlers run) instead of
    # being killed by the re-raised signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_after_drain)
    try:
        uvicorn.Server(config).run()
    except SystemExit:
        pass
    return 1 if app.state.service.failure else 0


def _exit_after_drain(signum, frame):
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
