"""The broadcast, emergency and announcement services, called as any face calls them.

No broker and no controller: the services write what the controller will send and say
that none was told (``controller_notified`` False). Audio is rendered for real (offline
TTS, ffmpeg), the database is SQLite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import col, select

from loudspeaker import audio_source
from loudspeaker.audio_source import SourceRequest, request_from_argument, resolve_source
from loudspeaker.auth import Actor
from loudspeaker.commands.common import warn_not_running
from loudspeaker.config import Settings
from loudspeaker.exceptions import (
    InvalidRequest,
    LoudspeakerError,
    NotFoundError,
    PermissionDenied,
    TargetError,
)
from loudspeaker.models import AuditEntry, Broadcast, Delivery
from loudspeaker.services import announcements, broadcasts, emergencies
from loudspeaker.services.broadcasts import BroadcastRequest
from loudspeaker.services.context import ServiceContext
from loudspeaker.services.emergencies import EmergencyRequest
from loudspeaker.targets import hamlet_clusters, resolve_targets
from tests.conftest import load_site
from tests.helpers import make_tone_mp3, prepared_emergency

OFFICER = Actor(name="officer1", role="officer")
HEAD = Actor(name="head1", role="hamlet-head", hamlet="ban-cau")


@pytest.fixture
def ctx(tmp_path: Path, sqlite_url: str) -> ServiceContext:
    load_site(sqlite_url)
    return ServiceContext(Settings(data_dir=tmp_path / "data", db_url=sqlite_url))


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    make_tone_mp3(tmp_path / "bulletin.mp3", 0.5)
    return tmp_path / "bulletin.mp3"


def _audit(ctx: ServiceContext, action: str) -> list[AuditEntry]:
    with ctx.session() as s:
        return list(
            s.exec(
                select(AuditEntry).where(AuditEntry.action == action).order_by(col(AuditEntry.seq))
            ).all()
        )


def _broadcasts(ctx: ServiceContext) -> list[Broadcast]:
    with ctx.session() as s:
        return list(s.exec(select(Broadcast)).all())


@pytest.mark.integration  # renders audio with ffmpeg
def test_hamlet_head_refused_outside_her_hamlet_is_audited_as_denied(
    ctx: ServiceContext, recording: Path
) -> None:
    with pytest.raises(PermissionDenied, match="lacks permission 'broadcast' for hamlet na-lang"):
        broadcasts.send(ctx, HEAD, BroadcastRequest(str(recording), "hamlet:na-lang"))
    with pytest.raises(PermissionDenied, match="lacks permission 'emergency'"):
        emergencies.trigger(ctx, HEAD, EmergencyRequest("Lũ", ("na-lang",), siren=True))
    [denied] = _audit(ctx, "broadcast.create")
    assert (denied.actor, denied.role, denied.outcome) == ("head1", "hamlet-head", "denied")
    assert denied.target == "hamlet:na-lang"
    [denied] = _audit(ctx, "emergency.trigger")
    assert (denied.outcome, denied.target) == ("denied", "na-lang")
    assert _broadcasts(ctx) == []


@pytest.mark.integration  # renders audio with ffmpeg
def test_send_writes_the_broadcast_and_one_audit_row(ctx: ServiceContext, recording: Path) -> None:
    sent = broadcasts.send(
        ctx, HEAD, BroadcastRequest(str(recording), "hamlet:ban-cau", repeat=2, gap_s=5)
    )
    assert sent.clusters == 2 and sent.title == "bulletin"
    assert sent.controller_notified is False  # no controller runs here
    [b] = _broadcasts(ctx)
    assert (b.id, b.created_by, b.source_kind, b.repeat, b.gap_s) == (
        sent.broadcast_id,
        "head1",
        "file",
        2,
        5.0,
    )
    with ctx.session() as s:
        deliveries = s.exec(select(Delivery).where(Delivery.broadcast_id == b.id)).all()
    assert sorted((d.cluster_id, d.state) for d in deliveries) == [
        ("lb-01", "queued"),
        ("lb-02", "queued"),
    ]
    [row] = _audit(ctx, "broadcast.create")
    assert (row.actor, row.outcome, row.target) == ("head1", "ok", "hamlet:ban-cau")
    assert f'"broadcast":"{b.id}"' in row.detail and '"clusters":2' in row.detail
    view = broadcasts.status(ctx, OFFICER, b.id[:6])
    assert view.counts == {"queued": 2} and not view.finished
    assert [v.broadcast.id for v in broadcasts.recent(ctx, OFFICER)] == [b.id]


@pytest.mark.integration  # renders audio with ffmpeg
@pytest.mark.parametrize(
    ("repeat", "gap", "says"),
    [(11, 0.0, "--repeat must be between 1 and 10"), (1, 7201.0, "--gap must be between")],
)
def test_invalid_repeat_or_gap_is_refused_before_anything_is_written(
    ctx: ServiceContext, recording: Path, repeat: int, gap: float, says: str
) -> None:
    request = BroadcastRequest(str(recording), "all", repeat=repeat, gap_s=gap)
    with pytest.raises(InvalidRequest, match=says):
        broadcasts.send(ctx, OFFICER, request)
    with pytest.raises(InvalidRequest, match=says):
        emergencies.trigger(
            ctx,
            OFFICER,
            EmergencyRequest("Lũ", everywhere=True, siren=True, repeat=repeat, gap_s=gap),
        )
    assert _broadcasts(ctx) == []
    assert _audit(ctx, "broadcast.create") == []


def test_emergencies_are_not_sent_as_broadcasts() -> None:
    from firmware_bridge.protocol import Priority

    with pytest.raises(InvalidRequest, match="emergencies use `loudspeaker emergency`"):
        BroadcastRequest("x", "all", priority=Priority.EMERGENCY)


@pytest.mark.parametrize("to", ["", "  "])
def test_a_broadcast_must_say_where(to: str) -> None:
    with pytest.raises(InvalidRequest, match=r"say where: --to all \| hamlet:NAME"):
        BroadcastRequest("x", to)


@pytest.mark.parametrize(("hamlets", "everywhere"), [((), False), (("na-lang",), True)])
def test_an_emergency_goes_to_some_hamlets_or_all(
    hamlets: tuple[str, ...], everywhere: bool
) -> None:
    with pytest.raises(InvalidRequest, match=r"say where: --hamlet NAME \(repeatable\) or --all"):
        EmergencyRequest("Lũ", hamlets, everywhere=everywhere).check()
    EmergencyRequest("Lũ", ("na-lang", "ban-cau")).check()
    EmergencyRequest("Lũ", everywhere=True).check()


@pytest.mark.integration  # renders audio with ffmpeg
def test_audio_source_resolution_picks_the_right_kind(ctx: ServiceContext, recording: Path) -> None:
    data_dir = ctx.settings.data_dir
    ann = announcements.make_from_text(
        ctx, OFFICER, "Họp thôn lúc 8h.", title="Họp", engine="offline"
    )
    with ctx.session() as s:
        as_file = request_from_argument(s, str(recording), "offline")
        as_announcement = request_from_argument(s, ann.id, "offline")
        as_text = request_from_argument(s, "Xin chào bà con.", "offline")
        # Text too long to be a file name is text, not an error from the file system.
        assert request_from_argument(s, "Thông báo " * 40, "offline").text
        # A mistyped announcement id is refused, never spoken to the whole commune.
        with pytest.raises(NotFoundError, match="no announcement 'deadbeef'"):
            request_from_argument(s, "deadbeef", "offline")
        with pytest.raises(InvalidRequest, match=r"audio file missing\.mp3 does not exist"):
            request_from_argument(s, "missing.mp3", "offline")
        file_src = resolve_source(s, data_dir, as_file)
        ann_src = resolve_source(s, data_dir, as_announcement)
        text_src = resolve_source(s, data_dir, as_text)
        tone_src = resolve_source(s, data_dir, SourceRequest(text="Lũ", tone="siren"))
        with pytest.raises(NotFoundError, match="no announcement 'gone'"):
            resolve_source(s, data_dir, SourceRequest(announcement="gone"))
    assert (file_src.kind, file_src.source, file_src.audio.engine) == (
        "file",
        "bulletin.mp3",
        "recording",
    )
    assert (ann_src.kind, ann_src.announcement_id, ann_src.title) == ("text", ann.id, "Họp")
    assert ann_src.audio.sha256 == ann.sha256  # the stored audio, not rendered again
    assert (text_src.kind, text_src.source, text_src.audio.engine) == (
        "text",
        "Xin chào bà con.",
        "espeak-ng",
    )
    assert (tone_src.kind, tone_src.source) == ("tone", "siren")
    assert tone_src.audio.duration_s == pytest.approx(audio_source.SIREN_SECONDS, abs=0.5)
    with pytest.raises(InvalidRequest, match="not both"):
        SourceRequest(recording=recording, tone="siren")


@pytest.mark.integration  # renders audio with ffmpeg
def test_emergency_trigger_records_and_stop_audits(ctx: ServiceContext) -> None:
    with pytest.raises(TargetError, match="no hamlet 'Atlantis'"):
        emergencies.trigger(ctx, OFFICER, EmergencyRequest("Lũ", ("Atlantis",), siren=True))
    # With no controller and no broker the emergency is recorded, then the direct path says
    # it cannot reach anybody.
    with pytest.raises(LoudspeakerError, match="no broker is reachable"):
        emergencies.trigger(
            ctx, HEAD, EmergencyRequest("Lũ", ("Thôn Bản Cầu",), siren=True), direct_wait_s=0
        )
    [b] = _broadcasts(ctx)
    assert (b.priority, b.created_by, b.target, b.source_kind) == (
        "emergency",
        "head1",
        "hamlet:Thôn Bản Cầu",
        "tone",
    )
    [row] = _audit(ctx, "emergency.trigger")
    assert (row.outcome, row.target) == ("ok", "hamlet:Thôn Bản Cầu")
    assert [v.view.broadcast.id for v in emergencies.active(ctx, OFFICER)] == [b.id]
    stopped = emergencies.stop(ctx, OFFICER, None)
    assert stopped.broadcast_ids == (b.id,) and stopped.controller_notified is False
    [row] = _audit(ctx, "emergency.stop")
    assert (row.actor, row.target) == ("officer1", b.id)
    with pytest.raises(NotFoundError, match="no emergency 'nope'"):
        emergencies.stop(ctx, OFFICER, "nope")


@pytest.mark.integration  # renders audio with ffmpeg
def test_an_announcement_an_emergency_still_plays_cannot_be_removed(ctx: ServiceContext) -> None:
    ann = announcements.make_from_text(ctx, OFFICER, "Lũ quét.", title="Lũ", engine="offline")
    request = EmergencyRequest("Lũ quét", ("pac-cap",), announcement=ann.id)
    with pytest.raises(LoudspeakerError, match="no broker is reachable"):
        emergencies.trigger(ctx, OFFICER, request, direct_wait_s=0)
    [b] = _broadcasts(ctx)
    assert (b.announcement_id, b.media_sha256, b.source_kind) == (ann.id, ann.sha256, "text")
    with pytest.raises(LoudspeakerError, match=f"still needed by broadcast {b.id}"):
        announcements.remove(ctx, OFFICER, ann.id)


def _recorded_emergency(ctx: ServiceContext, tmp_path: Path, hamlet: str) -> str:
    """An emergency to ``hamlet`` as the controller records it (no render)."""
    from loudspeaker import emergency as em

    prepared = prepared_emergency(ctx.settings.media_dir, tmp_path, hamlet=hamlet)
    with ctx.session() as s:
        b = em.record(s, ctx.settings.data_dir, prepared, created_by="someone")
        s.commit()
        return b.id


def test_a_hamlet_head_stops_the_emergencies_of_her_hamlet_and_no_other(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    hers = _recorded_emergency(ctx, tmp_path, "ban-cau")
    other = _recorded_emergency(ctx, tmp_path, "pac-cap")
    with pytest.raises(PermissionDenied, match="for hamlet pac-cap"):
        emergencies.stop(ctx, HEAD, other)
    [denied] = _audit(ctx, "emergency.stop")
    assert (denied.outcome, denied.actor) == ("denied", "head1")
    # A bare stop from her means the active ones of her hamlet.
    assert emergencies.stop(ctx, HEAD, None).broadcast_ids == (hers,)
    assert [b.id for b in _broadcasts(ctx) if b.stopped_at is not None] == [hers]
    # Commune-wide roles stop any.
    assert emergencies.stop(ctx, OFFICER, other).broadcast_ids == (other,)


def test_hamlet_lookup_is_shared_by_targets_and_emergencies(ctx: ServiceContext) -> None:
    with ctx.session() as s:
        by_name = resolve_targets(s, "hamlet:thôn bản cầu")
        by_id = hamlet_clusters(s, ["ban-cau"])
        everything = hamlet_clusters(s, [])
        for lookup in (lambda: resolve_targets(s, "hamlet:x"), lambda: hamlet_clusters(s, ["x"])):
            with pytest.raises(TargetError, match="no hamlet 'x'; known: ban-cau"):
                lookup()
    assert [c.id for c in by_name] == [c.id for c in by_id] == ["lb-01", "lb-02"]
    assert len(everything) == 10


@pytest.mark.integration  # renders audio with ffmpeg
def test_announcement_removal_is_audited(ctx: ServiceContext) -> None:
    ann = announcements.make_from_text(ctx, HEAD, "Tin chiều.", title="Tin", engine="offline")
    assert [a.id for a in announcements.current(ctx, OFFICER)] == [ann.id]
    with pytest.raises(InvalidRequest, match="--title"):
        announcements.make_from_text(ctx, HEAD, "Tin chiều.", title=" ")
    removed = announcements.remove(ctx, HEAD, ann.id)
    assert removed.id == ann.id
    assert announcements.current(ctx, OFFICER) == []
    [row] = _audit(ctx, "announce.remove")
    assert (row.actor, row.target, row.outcome) == ("head1", ann.id, "ok")
    with pytest.raises(NotFoundError, match="no announcement"):
        announcements.show(ctx, OFFICER, ann.id)


def test_warn_not_running_says_what_waits(capsys: pytest.CaptureFixture[str]) -> None:
    warn_not_running(True, "the stop takes effect")
    assert capsys.readouterr().err == ""
    warn_not_running(False, "the stop takes effect")
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at the terminal's width
    assert (
        "warning: the controller is not running; the stop takes effect when `loudspeaker serve`"
        in err
    )
