"""Log and progress lines go to stderr, flushed at once: stdout carries the results (JSON, bundle
paths, predictions) that scripts and `$(...)` capture."""
import sys


def say(msg):
    print(msg, file=sys.stderr)
    sys.stderr.flush()


def format_duration(seconds):
    """HH:MM:SS, with a day count in front past 24 hours: the ETAs and durations of progress lines."""
    seconds = int(round(max(seconds, 0)))
    days, rest = divmod(seconds, 86400)
    text = "%02d:%02d:%02d" % (rest // 3600, rest % 3600 // 60, rest % 60)
    return ("%dd %s" % (days, text)) if days else text
