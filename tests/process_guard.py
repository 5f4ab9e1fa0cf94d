"""A test that starts a process is an integration test, and says so with the mark.

``make unit`` (``pytest -m "not integration"``) runs on a machine without mosquitto,
PostgreSQL or ffmpeg, in seconds. One unmarked test that starts a broker would quietly
break both, so an unmarked test that starts a process fails, saying which mark to add:

- fixtures that start processes call :func:`require_integration` before they do (the
  clearest message: it names the fixture);
- everything else is caught where the interpreter starts the process: an audit hook
  (PEP 578) sees ``subprocess``, ``os.fork``, ``os.exec*``, ``os.posix_spawn`` and
  ``os.system``, and ``os.openpty`` (which has no audit event) is replaced while an
  unmarked test is set up and run.

The guard covers a test's setup and call, not its teardown: stopping a session-wide
server (``pg_ctl stop``) may fall into whichever test runs last.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

MARK = "integration"
HOW_TO_FIX = f"mark it @pytest.mark.{MARK} (or its module: pytestmark = pytest.mark.{MARK})"

# The interpreter's audit events for starting a process (see the audit events table).
PROCESS_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.fork",
        "os.forkpty",
        "os.spawn",
    }
)


class ProcessInUnitTest(RuntimeError):
    """A test without the integration mark started a process."""


def is_integration(item: pytest.Item) -> bool:
    """True when ``item`` (or its class or module) carries the integration mark."""
    return item.get_closest_marker(MARK) is not None


def require_integration(request: pytest.FixtureRequest, what: str) -> None:
    """Fail the requesting test, unless it is marked integration, before giving it ``what``."""
    if not is_integration(request.node):
        pytest.fail(
            f"{request.node.nodeid} uses {what} (fixture {request.fixturename!r}) "
            f"but is not marked {MARK}: {HOW_TO_FIX}",
            pytrace=False,
        )


def _describe(event: str, args: tuple[object, ...]) -> str:
    # subprocess.Popen's first argument is the executable (None: taken from args[1]).
    if event == "subprocess.Popen" and len(args) > 1:
        return f"{event} {args[0] or args[1]!r}"
    if event in ("os.exec", "os.posix_spawn", "os.system") and args:
        return f"{event} {args[0]!r}"
    return event


class ProcessGuard:
    """Refuses process starts while an unmarked test runs; remembers each refusal."""

    def __init__(self) -> None:
        self.test: str | None = None  # node id of the unmarked test being set up or run
        self.refused: list[str] = []
        self._installed = False

    def install(self) -> None:
        """Add the audit hook (once per interpreter: audit hooks cannot be removed)."""
        if not self._installed:
            sys.addaudithook(self._audit)
            self._installed = True

    def _refuse(self, what: str) -> ProcessInUnitTest:
        self.refused.append(what)
        return ProcessInUnitTest(
            f"{self.test} started a process ({what}) but is not marked {MARK}: {HOW_TO_FIX}"
        )

    def _audit(self, event: str, args: tuple[object, ...]) -> None:
        # Called for every audited event in every thread: the first test is the cheap one.
        if self.test is None or event not in PROCESS_EVENTS:
            return
        raise self._refuse(_describe(event, args))

    def _no_openpty(self) -> tuple[int, int]:
        raise self._refuse("os.openpty: a pty pair")

    @contextmanager
    def checking(self, item: pytest.Item) -> Iterator[None]:
        """Refuse process starts inside the block unless ``item`` is an integration test.

        Fails the test after the block if a start was refused there, even if the code
        under test caught the refusal.
        """
        if is_integration(item):
            yield
            return
        before = len(self.refused)
        real_openpty = os.openpty
        self.test = item.nodeid
        os.openpty = self._no_openpty
        try:
            yield
        finally:
            os.openpty = real_openpty
            self.test = None
        refused = self.refused[before:]
        if refused:
            pytest.fail(
                f"{item.nodeid} started a process ({'; '.join(refused)}) "
                f"but is not marked {MARK}: {HOW_TO_FIX}",
                pytrace=False,
            )


GUARD = ProcessGuard()
