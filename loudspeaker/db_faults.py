"""Database faults in the controller's workers: what counts as one and how long to wait.

A locked SQLite file, a dropped PostgreSQL connection, a session poisoned by an earlier
error (``PendingRollbackError``) or objects left detached by a rollback
(``DetachedInstanceError``) are all ``SQLAlchemyError``: a worker that meets one rolls back
(its ``with Session`` does), keeps its events, and tries again with a new session after the
project's one backoff policy (firmware_bridge/backoff.py) says how long to wait.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from firmware_bridge.backoff import Backoff, Retrier

logger = logging.getLogger(__name__)

T = TypeVar("T")

# sqlite3.Error too: a raw driver error can escape where SQLAlchemy does not wrap it.
DB_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, sqlite3.Error)

# Short first waits (a busy lock usually clears in milliseconds), capped so a worker
# is never more than a second or two away from serving an emergency.
WORKER_BACKOFF = Backoff(initial=0.05, factor=2.0, cap=1.0, jitter=0.2)


class DbFaults:
    """Counts one worker's database failures and says how long to wait before retrying."""

    def __init__(self, worker: str, policy: Backoff = WORKER_BACKOFF) -> None:
        self.worker = worker
        self.total = 0
        self._retrier = Retrier(policy)

    def failed(self, exc: BaseException, kept: int, what: str = "events") -> float:
        """Log the failure; the delay before the next attempt."""
        self.total += 1
        delay = self._retrier.next_delay()
        logger.warning(
            "%s: database error (%s: %s); %d %s kept, retrying in %.2f s",
            self.worker,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            kept,
            what,
            delay,
        )
        return delay

    def ok(self) -> None:
        """An iteration went through: the next failure starts from the shortest wait."""
        self._retrier.reset()

    @property
    def failing(self) -> int:
        """Consecutive failures since the last success."""
        return self._retrier.attempts


def retry_within(attempt: Callable[[], T], budget_s: float, policy: Backoff, what: str) -> T:
    """``attempt()``, retried after a database error until ``budget_s`` seconds have passed.

    Past the budget the last database error propagates: the caller decides what then.
    """
    deadline = time.monotonic() + budget_s
    retrier = Retrier(policy)
    while True:
        try:
            return attempt()
        except DB_ERRORS as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            delay = min(retrier.next_delay(), left)
            logger.warning("%s not done yet (%s); retrying in %.2f s", what, first_line(exc), delay)
            time.sleep(delay)


def first_line(exc: BaseException) -> str:
    """What a database error says, on one line (the driver's own message when wrapped)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.splitlines()[0] if text else type(exc).__name__
