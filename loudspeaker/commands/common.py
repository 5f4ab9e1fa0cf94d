"""What every command shares: settings, database sessions, errors, output."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape

from firmware_bridge.exceptions import BridgeError
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.services.context import ServiceContext

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def _error_types() -> tuple[type[Exception], ...]:
    from audio.exceptions import AudioError
    from schedules.exceptions import ScheduleError

    return (LoudspeakerError, BridgeError, AudioError, ScheduleError)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our exceptions into a one-line message and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except _error_types() as exc:
            err_console.print(
                f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(1) from None

    return wrapper


class State(ServiceContext):
    """Options shared by every command, kept in the Typer context (the services' context)."""


def state_of(ctx: typer.Context) -> State:
    """The shared state of this invocation."""
    obj = ctx.obj
    if not isinstance(obj, State):
        raise LoudspeakerError("internal: command run without the loudspeaker app")
    return obj


def warn_not_running(notified: bool, what: str) -> None:
    """Say that no controller runs (``notified`` False), so ``what`` waits for ``serve``."""
    if not notified:
        err_console.print(
            f"[yellow]warning:[/] the controller is not running; {what} when "
            "`loudspeaker serve` starts"
        )


def print_json(data: Any) -> None:
    """Print ``data`` as indented UTF-8 JSON."""
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def local_time(ts: datetime | None, zone: ZoneInfo, fmt: str = "%H:%M:%S") -> str:
    """A stored UTC time shown in the site's zone, or '-'."""
    if ts is None:
        return "-"
    return ts.astimezone(zone).strftime(fmt)
