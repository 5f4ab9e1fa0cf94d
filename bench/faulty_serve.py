"""``loudspeaker serve`` with a test-only fault: a worker thread dies on demand.

Run as ``python -m bench.faulty_serve <the CLI's arguments>`` (from the checkout, with
``LOUDSPEAKER_TEST_FAULT_DIR`` set). It lives in bench/, which is not packaged and which
production never imports, so the fault cannot be reached there; the chaos test
(tests/chaos/test_chaos_worker_raises.py) and bench/chaos.py both use it. Each worker's
iteration is wrapped: while ``$LOUDSPEAKER_TEST_FAULT_DIR/die-<worker>`` exists, the next
iteration deletes it and raises an exception that escapes every ``except Exception`` of
the worker's loop, killing its thread as an unforeseen fault would. The controller's
supervisor must restart it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

ENV_FAULT_DIR = "LOUDSPEAKER_TEST_FAULT_DIR"
WORKERS = ("dispatcher", "health", "schedule-runner")


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


@contextmanager
def workers_killed(
    fault_dir: Path,
    poke: Callable[[], None],
    workers: tuple[str, ...] = WORKERS,
    timeout_s: float = 20.0,
) -> Iterator[None]:
    """The fault injector: kill the named worker threads of a serve run by this module.

    Entered once each has been told to die and the controller woken (``poke``, e.g.
    ``ControllerCard.poke``); left once each has died (its flag consumed), or raises
    ``TimeoutError``.
    """
    for name in workers:
        (fault_dir / f"die-{name}").touch()
    poke()  # wakes all three now, rather than at their next poll
    yield
    deadline = time.monotonic() + timeout_s
    while any(fault_dir.glob("die-*")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"a worker never died: {sorted(fault_dir.glob('die-*'))}")
        time.sleep(0.05)


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
