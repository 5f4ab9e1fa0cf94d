"""What every command shares: settings, database sessions, errors, output."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from firmware_bridge.exceptions import BridgeError
from loudspeaker.auth import Actor, current_actor
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.services.context import ServiceContext

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

# Options and arguments that several commands take, spelt once (same flag, same help).
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]
IdArg = Annotated[str, typer.Argument(metavar="ID")]
RepeatOpt = Annotated[int, typer.Option(min=1, max=10, help="Times to play (1-10)")]
GapOpt = Annotated[float, typer.Option(min=0, max=7200, help="Seconds between repeats")]
TimeoutOpt = Annotated[float, typer.Option(min=0, help="Give up waiting after this many seconds")]
DAY_MINUTE = "%Y-%m-%d %H:%M"
DAY_SECOND = "%d/%m %H:%M:%S"


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

    def actor(self) -> Actor:
        """Who this shell acts as (see :func:`loudspeaker.auth.current_actor`)."""
        return current_actor(self)


def state_of(ctx: typer.Context) -> State:
    """The shared state of this invocation."""
    obj = ctx.obj
    if not isinstance(obj, State):
        raise LoudspeakerError("internal: command run without the loudspeaker app")
    return obj


def face(fn: Callable[Concatenate[State, P], R]) -> Callable[..., R]:
    """A command that takes this invocation's :class:`State` first, errors as one line.

    Typer sees a ``ctx: typer.Context`` in the state's place, so no command repeats
    ``state_of(ctx)``; the other parameters (options, arguments) are the command's own.
    """
    params = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]
    ctx = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(fn)
    def run(*args: Any, ctx: typer.Context, **kwargs: Any) -> R:
        return fn(state_of(ctx), *args, **kwargs)

    run.__signature__ = inspect.Signature([*params, ctx])  # type: ignore[attr-defined]
    # Already evaluated: Typer must not resolve the names in the command's module again.
    run.__annotations__ = {p.name: p.annotation for p in [*params, ctx]}
    return handle_errors(run)


def command(app: typer.Typer, name: str) -> Callable[[Callable[Concatenate[State, P], R]], Any]:
    """Register a :func:`face` as ``app``'s sub-command ``name``."""
    return lambda fn: app.command(name)(face(fn))


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


def iso_time(iso: str | None, zone: ZoneInfo, fmt: str = "%H:%M:%S") -> str:
    """An ISO time from a service's JSON view shown in the site's zone, or '-'."""
    return local_time(datetime.fromisoformat(iso) if iso else None, zone, fmt)


def print_rows(columns: Sequence[str], rows: Iterable[Sequence[str]], **options: Any) -> None:
    """Print ``rows`` as a Rich table under ``columns`` (``options`` go to the Table)."""
    table = Table(*columns, **options)
    for row in rows:
        table.add_row(*row)
    console.print(table)
