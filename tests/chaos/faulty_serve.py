"""``loudspeaker serve`` with a test-only fault: a worker thread dies on demand.

Run as ``python -m tests.chaos.faulty_serve <the CLI's arguments>``. It lives in tests/,
which production never imports, so the fault cannot be reached there. Each worker's
iteration is wrapped: while ``$LOUDSPEAKER_TEST_FAULT_DIR/die-<worker>`` exists, the next
iteration deletes it and raises an exception that escapes every ``except Exception`` of
the worker's loop, killing its thread as an unforeseen fault would. The controller's
supervisor must restart it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

ENV_FAULT_DIR = "LOUDSPEAKER_TEST_FAULT_DIR"


class WorkerKilled(BaseException):
    """A fault no worker loop catches."""


def dying(name: str, iteration: Callable[..., Any]) -> Callable[..., Any]:
    """``iteration``, raising :class:`WorkerKilled` once per ``die-<name>`` file."""

    @wraps(iteration)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flag = Path(os.environ[ENV_FAULT_DIR]) / f"die-{name}"
        try:
            flag.unlink()
        except FileNotFoundError:
            return iteration(*args, **kwargs)
        raise WorkerKilled(f"test fault: the {name} thread is killed")

    return wrapper


def main() -> None:
    """Wrap the three workers' iterations, then run the CLI as ``python -m cli`` does."""
    from cli import main as cli_main
    from loudspeaker.dispatcher import Dispatcher
    from loudspeaker.health import HealthMonitor
    from loudspeaker.schedule_runner import ScheduleRunner

    Dispatcher.step = dying("dispatcher", Dispatcher.step)  # type: ignore[method-assign]
    HealthMonitor.step = dying("health", HealthMonitor.step)  # type: ignore[method-assign]
    ScheduleRunner.sync = dying("schedule-runner", ScheduleRunner.sync)  # type: ignore[method-assign]
    cli_main()


if __name__ == "__main__":
    main()
