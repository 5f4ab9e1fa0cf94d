"""The deadline rules (loudspeaker/deadlines.py), on their own: no broker, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loudspeaker import deadlines
from loudspeaker.deadlines import Action, Policy, Rules
from loudspeaker.models import Delivery, DeliveryState

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
RULES = Rules(
    ack_timeout=timedelta(seconds=5),
    command_ttl=timedelta(seconds=600),
    emergency_retry=timedelta(seconds=3),
)
AIR = timedelta(seconds=20)
S = timedelta(seconds=1)


def _row(state: DeliveryState, **kw: object) -> Delivery:
    fields: dict[str, object] = {"queued_at": T0, "updated_at": T0, "sent_at": T0}
    fields.update(kw)
    return Delivery(
        id=1,
        broadcast_id="b1",
        cluster_id="lb-01",
        command_id="c1",
        state=state.value,
        **fields,  # type: ignore[arg-type]
    )


def _judge(
    d: Delivery,
    t: datetime,
    *,
    emergency: bool = False,
    listening_since: datetime = T0 - timedelta(hours=1),
    last_sent: datetime | None = None,
) -> deadlines.Verdict:
    return deadlines.judge(
        d,
        t,
        RULES,
        emergency=emergency,
        air=AIR,
        listening_since=listening_since,
        last_sent=last_sent,
    )


def test_policies() -> None:
    plain = _row(DeliveryState.SENT)
    timed = _row(DeliveryState.SENT, start_at=T0)
    assert deadlines.policy_of(plain, emergency=False) is Policy.IMMEDIATE
    assert deadlines.policy_of(timed, emergency=False) is Policy.TIMED
    assert deadlines.policy_of(timed, emergency=True) is Policy.EMERGENCY


def test_air_time_counts_every_repeat_and_the_gaps_between() -> None:
    assert deadlines.air_time(10.0, 3, 5.0) == timedelta(seconds=40)
    assert deadlines.air_time(10.0, 1, 5.0) == timedelta(seconds=10)


# -- immediate ----------------------------------------------------------------------------


def test_immediate_sent_is_given_up_after_the_ack_timeout() -> None:
    d = _row(DeliveryState.SENT)
    assert _judge(d, T0 + 5 * S).action is Action.WAIT
    verdict = _judge(d, T0 + 6 * S)
    assert verdict == deadlines.Verdict(Action.GIVE_UP, "no answer within 5 s")


def test_silence_counts_only_while_the_controller_listens() -> None:
    d = _row(DeliveryState.SENT)
    # Reconnected at T0+10 s: the 5 s count from there, not from the send.
    assert _judge(d, T0 + 14 * S, listening_since=T0 + 10 * S).action is Action.WAIT
    assert _judge(d, T0 + 16 * S, listening_since=T0 + 10 * S).action is Action.GIVE_UP


@pytest.mark.parametrize("state", [DeliveryState.RECEIVED, DeliveryState.PLAYING])
def test_immediate_progress_gets_fetch_air_and_margin(state: DeliveryState) -> None:
    d = _row(state)
    allowance = deadlines.FETCH_ALLOWANCE + AIR + deadlines.FINAL_MARGIN
    assert _judge(d, T0 + allowance).action is Action.WAIT
    verdict = _judge(d, T0 + allowance + S)
    assert verdict.action is Action.GIVE_UP
    assert verdict.reason == f"no final acknowledgement (last state {state.value})"


def test_an_interrupted_item_waits_up_to_the_command_lifetime() -> None:
    d = _row(DeliveryState.PLAYING, reason="interrupted")
    assert _judge(d, T0 + 599 * S).action is Action.WAIT
    assert _judge(d, T0 + 601 * S).action is Action.GIVE_UP


# -- emergency ----------------------------------------------------------------------------


def test_an_unanswered_emergency_is_sent_again_not_given_up() -> None:
    d = _row(DeliveryState.SENT, expires_at=T0 + 1800 * S)
    assert _judge(d, T0 + 2 * S, emergency=True).action is Action.WAIT
    assert _judge(d, T0 + 3 * S, emergency=True) == deadlines.Verdict(
        Action.RESEND, "no answer yet; sent again"
    )
    # Counted from the last publish the dispatcher made, not the first.
    assert _judge(d, T0 + 60 * S, emergency=True, last_sent=T0 + 59 * S).action is Action.WAIT
    # Long past the ack timeout, still not given up.
    assert _judge(d, T0 + 1000 * S, emergency=True).action is Action.RESEND


def test_an_emergency_is_given_up_only_when_it_expires() -> None:
    sent = _row(DeliveryState.SENT, expires_at=T0 + 1800 * S)
    verdict = _judge(sent, T0 + 1800 * S, emergency=True)
    assert verdict.action is Action.GIVE_UP and "cluster offline?" in verdict.reason
    playing = _row(DeliveryState.PLAYING, expires_at=T0 + 1800 * S)
    assert _judge(playing, T0 + 1000 * S, emergency=True).action is Action.WAIT
    verdict = _judge(playing, T0 + 1801 * S, emergency=True)
    assert verdict.reason == "emergency expired before a final answer (last state playing)"


# -- timed --------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [DeliveryState.SENT, DeliveryState.RECEIVED])
def test_a_timed_item_not_yet_staged_waits_until_it_can_no_longer_start(
    state: DeliveryState,
) -> None:
    start = T0 + 3600 * S
    d = _row(state, start_at=start, expires_at=start + 60 * S)
    # Long past the ack timeout, but the box may come back and stage it in time.
    assert _judge(d, T0 + 3000 * S).action is Action.WAIT
    assert _judge(d, start + 65 * S).action is Action.WAIT
    verdict = _judge(d, start + 66 * S)
    assert verdict.action is Action.GIVE_UP
    assert "not staged on the cluster before its air time" in verdict.reason


def test_a_staged_timed_item_gets_its_air_time_from_its_latest_start() -> None:
    start = T0 + 3600 * S
    d = _row(DeliveryState.STAGED, start_at=start, expires_at=start + 60 * S)
    latest = start + 60 * S
    assert _judge(d, latest + AIR + deadlines.FINAL_MARGIN).action is Action.WAIT
    assert _judge(d, latest + AIR + deadlines.FINAL_MARGIN + S).action is Action.GIVE_UP


def test_staged_ahead_only_before_the_latest_start() -> None:
    start = T0 + 60 * S
    staged = _row(DeliveryState.STAGED, start_at=start, expires_at=start + 30 * S)
    assert deadlines.staged_ahead(staged, start + 29 * S)
    assert not deadlines.staged_ahead(staged, start + 30 * S)
    assert not deadlines.staged_ahead(_row(DeliveryState.STAGED), T0)
    assert not deadlines.staged_ahead(_row(DeliveryState.PLAYING, start_at=start), T0)
