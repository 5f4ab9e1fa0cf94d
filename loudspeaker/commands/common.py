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
from sqlalchemy import Engine
from sqlmodel import Session

from firmware_bridge.exceptions import BridgeError
from loudspeaker.config import Settings
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.keystore import Keystore
from loudspeaker.runtime import ControllerCard

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_ZONE = "Asia/Ho_Chi_Minh"


def _error_types() -> tuple[type[Exception], ...]:
    from audio.exceptions import AudioError

    return (LoudspeakerError, BridgeError, AudioError)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our exceptions into a one-line message and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except _error_types() as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


class State:
    """Options shared by every command, kept in the Typer context."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._keystore: Keystore | None = None

    @property
    def engine(self) -> Engine:
        """The database engine (tables created on first use)."""
        if self._engine is None:
            from loudspeaker.db import init_db, make_engine
            from loudspeaker.filemodes import secure_data_dir

            secure_data_dir(self.settings)
            self._engine = make_engine(self.settings.database_url)
            init_db(self._engine, self.keystore)
        return self._engine

    @property
    def keystore(self) -> Keystore:
        """The key store that seals the cluster signing keys in the database."""
        if self._keystore is None:
            self._keystore = Keystore.of(self.settings)
        return self._keystore

    def session(self) -> Session:
        """A new session; one per command, never shared across threads."""
        return Session(self.engine, expire_on_commit=False)

    def controller(self) -> ControllerCard | None:
        """The running controller's address card, or None."""
        return ControllerCard.read(self.settings.run_dir)

    def zone(self) -> ZoneInfo:
        """The site's time zone (Asia/Ho_Chi_Minh when no site is loaded)."""
        from loudspeaker.site import current_site

        with self.session() as s:
            try:
                return ZoneInfo(current_site(s).site.timezone)
            except LoudspeakerError:
                return ZoneInfo(DEFAULT_ZONE)


def state_of(ctx: typer.Context) -> State:
    """The shared state of this invocation."""
    obj = ctx.obj
    if not isinstance(obj, State):
        raise LoudspeakerError("internal: command run without the loudspeaker app")
    return obj


def print_json(data: Any) -> None:
    """Print ``data`` as indented UTF-8 JSON."""
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def local_time(ts: datetime | None, zone: ZoneInfo, fmt: str = "%H:%M:%S") -> str:
    """A stored UTC time shown in the site's zone, or '-'."""
    if ts is None:
        return "-"
    return ts.astimezone(zone).strftime(fmt)
