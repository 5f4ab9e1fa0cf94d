"""Running a long-lived process from the command line: log level, file modes, signals."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from loudspeaker.filemodes import FileModes


def log_at_least_info() -> None:
    """Show INFO lines (who connected, what was sent) unless the user asked for more."""
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)


def private_umask(group: str | None) -> None:
    """Everything this process creates is private to its account, or shared with the
    operators' group only (docs/security.md, "Secrets")."""
    os.umask(FileModes.for_group(group).umask)


def run_until_signalled(
    start: Callable[[], None], stop: Callable[[], None], started: Callable[[], None]
) -> None:
    """``start()``, then ``started()`` (say so), wait for SIGTERM or SIGINT, ``stop()``."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    start()
    started()
    done.wait()
    stop()
