"""``loudspeaker demo``: the whole path on embedded defaults.

Real processes, as in production: ``loudspeaker serve`` (with its private mosquitto) and
``loudspeaker simulate`` run as children; this process loads the site, renders a
Vietnamese bulletin offline, queues the broadcast and follows the acknowledgements.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import col, select

from loudspeaker.broadcasts import BroadcastView, create_broadcast, register_media
from loudspeaker.commands.broadcast import resolve_source, wait_for
from loudspeaker.commands.common import State, console, handle_errors, print_json, state_of
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.media import MediaStore
from loudspeaker.models import ClusterStatus
from loudspeaker.runtime import ControllerCard
from loudspeaker.site import load_site_file, store_site
from loudspeaker.targets import resolve_targets

DEMO_TEXT = (
    "Thông báo của Ủy ban nhân dân xã Lục Bình. Sáng mai, từ 7h, "
    "bà con 8/8 thôn tham gia tổng vệ sinh môi trường, khơi thông cống rãnh "
    "để phòng chống ngập úng mùa mưa bão."
)
_MARKER = ".loudspeaker-demo"


@contextmanager
def _child(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def _fresh_dir(path: Path) -> None:
    # Only ever wipe a directory the demo itself made: never someone's real data.
    if path.exists() and any(path.iterdir()):
        if not (path / _MARKER).exists():
            raise LoudspeakerError(
                f"{path} exists and is not a demo directory; choose another --demo-dir"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / _MARKER).write_text("made by `loudspeaker demo`; safe to delete\n")


@handle_errors
def demo(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
    site_file: Annotated[Path, typer.Option(help="Site file to load")] = Path(
        "sites/luc-binh.toml"
    ),
    demo_dir: Annotated[Path, typer.Option(help="Scratch data directory (wiped at start)")] = Path(
        "var/demo"
    ),
) -> None:
    """The whole path on embedded defaults: site, controller, simulated clusters, a bulletin."""
    outer = state_of(ctx)
    _fresh_dir(demo_dir)
    state = State(replace(outer.settings, data_dir=demo_dir.resolve(), db_url=None))
    log = demo_dir / "demo.log"

    def say(message: str) -> None:
        if not as_json:
            console.print(message)

    site = load_site_file(site_file)
    with state.session() as s:
        store_site(s, site)
    say(
        f"1. Site [bold]{site.site.name}[/]: {len(site.hamlets)} hamlets, "
        f"{len(site.clusters)} clusters"
    )
    base = ["--data-dir", str(state.settings.data_dir)]
    with _child([*base, "serve"], log) as ctl:
        if not _wait_until(lambda: state.controller() is not None or ctl.poll() is not None, 30):
            raise LoudspeakerError(f"controller did not start; see {log}")
        card = state.controller()
        if card is None or ctl.poll() is not None:
            raise LoudspeakerError(f"controller exited with {ctl.returncode}; see {log}")
        say(
            f"2. Controller up (pid {card.pid}): private mosquitto {card.broker_url}, "
            f"media {card.http_url}"
        )
        with _child([*base, "simulate"], log):
            if not _wait_until(lambda: _online(state) >= len(site.clusters), 30):
                raise LoudspeakerError(f"simulated clusters did not come online; see {log}")
            say(f"3. {len(site.clusters)} simulated clusters online")
            view = _broadcast(state, card, say, live=not as_json)
    _summary(view, as_json, log)


def _online(state: State) -> int:
    with state.session() as s:
        return len(s.exec(select(ClusterStatus).where(col(ClusterStatus.online))).all())


def _broadcast(
    state: State, card: ControllerCard, say: Callable[[str], None], *, live: bool
) -> BroadcastView:
    af = resolve_source(state, DEMO_TEXT, "offline").audio
    say(f"4. Rendered the bulletin offline ({af.engine}): {af.duration_s:.1f} s, {af.size} bytes")
    with state.session() as s:
        media = register_media(s, MediaStore(state.settings.media_dir), af)
        b = create_broadcast(
            s,
            media=media,
            title="Tổng vệ sinh môi trường",
            target="all",
            clusters=resolve_targets(s, "all"),
            source_kind="text",
            source=DEMO_TEXT,
            created_by="demo",
        )
        bid = b.id
    card.poke()
    say(f"5. Broadcast {bid} to every cluster:")
    return wait_for(state, bid, 60 + af.duration_s, live=live)


def _summary(view: BroadcastView, as_json: bool, log: Path) -> None:
    played = sum(d.state == "played" for d in view.deliveries)
    ok = played == len(view.deliveries)
    if as_json:
        print_json({"ok": ok, **view.to_json()})
    else:
        colour = "green" if ok else "red"
        console.print(
            f"[{colour}]Summary: {played}/{len(view.deliveries)} clusters played the bulletin.[/]"
        )
        if not ok:
            console.print(f"See {log} for the controller's and clusters' logs.")
    if not ok:
        raise typer.Exit(1)
