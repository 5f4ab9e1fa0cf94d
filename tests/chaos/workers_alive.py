"""After a fault: is every worker of the controller still working? (dispatcher, health
monitor, schedule runner), each judged by what only it writes."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from loudspeaker.broadcasts import register_media
from loudspeaker.db import as_utc
from loudspeaker.media import MediaStore
from loudspeaker.models import Announcement, ClusterHealth, ScheduleRecord, ScheduleSlot, now
from loudspeaker.runtime import ControllerCard
from tests.chaos.chaos_support import count_in, queue_broadcast
from tests.helpers import make_tone_mp3, wait_until


def assert_workers_work(
    engine: Engine, card: ControllerCard, data_dir: Path, work: Path, since: datetime
) -> None:
    """A bulletin plays everywhere, heartbeats are recorded, a schedule is staged."""

    # The health monitor: every cluster's heartbeat recorded after ``since``.
    def heartbeats_after() -> bool:
        with Session(engine) as s:
            rows = s.exec(select(ClusterHealth)).all()
            return len(rows) == 10 and all((as_utc(r.received_at) or since) > since for r in rows)

    assert wait_until(heartbeats_after, 20), "the health monitor records no heartbeats"
    # The schedule runner: a programme a minute away is staged on the clusters.
    af = make_tone_mp3(work / "sched-tone.mp3", 1.0, freq=777)
    t = now()
    with Session(engine) as s:
        media = register_media(s, MediaStore(data_dir / "media"), af)
        s.add(
            Announcement(
                id="chaos-sched",
                title="Bản tin",
                kind="tone",
                engine="tone",
                media_sha256=media.sha256,
                duration_s=1.0,
                size=media.size,
                created_at=t,
            )
        )
        s.add(
            ScheduleRecord(
                title="Bản tin",
                rule={"kind": "at", "at": (t + timedelta(minutes=5)).isoformat()},
                items=[{"announcement": "chaos-sched", "priority": "normal"}],
                target="hamlet:coc-xa",
                created_at=t,
                active_since=t,
                updated_at=t,
            )
        )
        s.commit()
    # The dispatcher: a bulletin to every cluster is played by every cluster.
    bid, _sha = queue_broadcast(engine, data_dir / "media", work, seconds=1.0, freq=640)
    card.poke()

    def staged() -> bool:
        with Session(engine) as s:
            return bool(
                s.exec(select(ScheduleSlot).where(col(ScheduleSlot.state) == "staged")).all()
            )

    assert wait_until(staged, 20), "the schedule runner stages nothing"
    assert wait_until(lambda: count_in(engine, bid, ["played"]) == 10, 30), (
        "the dispatcher does not get a bulletin played"
    )
