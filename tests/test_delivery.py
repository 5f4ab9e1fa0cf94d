"""The delivery state machine (loudspeaker/delivery.py), on its own: no broker, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from firmware_bridge.protocol import AckState
from loudspeaker import delivery
from loudspeaker.delivery import Move
from loudspeaker.models import FINAL_STATES, Delivery, DeliveryState

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
FORWARD = [
    DeliveryState.QUEUED,
    DeliveryState.SENT,
    DeliveryState.RECEIVED,
    DeliveryState.STAGED,
    DeliveryState.PLAYING,
]
ENDS = [DeliveryState.PLAYED, DeliveryState.FAILED, DeliveryState.UNREACHABLE]


def _row(state: DeliveryState = DeliveryState.QUEUED, reason: str = "") -> Delivery:
    return Delivery(
        id=7,
        broadcast_id="b1",
        cluster_id="lb-01",
        command_id="c1",
        state=state.value,
        reason=reason,
        queued_at=T0,
        updated_at=T0,
    )


def _event(state: DeliveryState, reason: str = "") -> delivery.Event:
    return delivery.Event(state, T0 + timedelta(seconds=5), reason)


@pytest.mark.parametrize(
    ("current", "new"),
    [(a, b) for i, a in enumerate(FORWARD) for b in [*FORWARD[i + 1 :], *ENDS]],
)
def test_every_forward_step_is_taken_and_stamped(
    current: DeliveryState, new: DeliveryState
) -> None:
    d = _row(current)
    tr, trail = delivery.advance(d, _event(new, "why" if new is not DeliveryState.PLAYED else ""))
    assert tr.move is Move.FORWARD
    assert d.state == new.value
    assert getattr(d, f"{new.value}_at") == T0 + timedelta(seconds=5)
    assert d.updated_at == T0 + timedelta(seconds=5)
    assert (trail.delivery_id, trail.state, trail.at) == (7, new.value, d.updated_at)


@pytest.mark.parametrize(
    ("current", "new"),
    [(a, b) for i, a in enumerate(FORWARD) for b in FORWARD[:i]],
)
def test_a_report_of_an_earlier_step_is_refused_but_recorded(
    current: DeliveryState, new: DeliveryState
) -> None:
    d = _row(current, reason="kept")
    tr, trail = delivery.advance(d, _event(new, "late"))
    assert tr.move is Move.REFUSED
    assert (d.state, d.reason, d.updated_at) == (current.value, "kept", T0)
    assert getattr(d, f"{new.value}_at", None) is None or new is DeliveryState.QUEUED
    assert (trail.state, trail.reason) == (new.value, "late")


@pytest.mark.parametrize("final", sorted(FINAL_STATES))
@pytest.mark.parametrize("new", [*FORWARD, *ENDS])
def test_final_states_stay_final(final: DeliveryState, new: DeliveryState) -> None:
    d = _row(final, reason="the end")
    tr = delivery.transition(final, _event(new, "again"))
    late_truth = final is DeliveryState.UNREACHABLE and new in (
        DeliveryState.PLAYED,
        DeliveryState.FAILED,
    )
    if late_truth:
        assert tr.move is Move.LATE_TRUTH and tr.state is new
        return
    assert tr.move is Move.REFUSED
    delivery.apply(d, tr)
    assert (d.state, d.reason, d.updated_at) == (final.value, "the end", T0)


def test_a_cluster_given_up_on_that_reports_played_is_believed() -> None:
    d = _row(DeliveryState.UNREACHABLE, reason="no answer within 5 s")
    tr, trail = delivery.advance(d, delivery.acked(AckState.PLAYED, T0, T0))
    assert tr.move is Move.LATE_TRUTH
    assert (d.state, d.reason, d.played_at) == ("played", "", T0)
    assert trail.state == "played"


def test_the_same_step_again_only_says_still_alive() -> None:
    d = _row(DeliveryState.PLAYING, reason="interrupted")
    d.playing_at = T0
    later = T0 + timedelta(seconds=30)
    tr, _ = delivery.advance(d, delivery.acked(AckState.PLAYING, later, later))
    assert tr.move is Move.REPEATED
    assert (d.state, d.playing_at, d.updated_at, d.reason) == ("playing", T0, later, "")
    staged = _row(DeliveryState.STAGED, reason="kept")
    delivery.advance(staged, delivery.acked(AckState.STAGED, later, later))
    assert (staged.reason, staged.updated_at) == ("kept", later)


def test_reasons_follow_the_rules() -> None:
    d = _row(DeliveryState.SENT, reason="old")
    delivery.advance(d, delivery.acked(AckState.RECEIVED, T0, T0))
    assert d.reason == "old"  # no reason given: the old one stays
    delivery.advance(d, delivery.acked(AckState.STAGED, T0, T0, "resumed after restart"))
    assert d.reason == "resumed after restart"
    delivery.advance(d, delivery.acked(AckState.PLAYED, T0, T0))
    assert d.reason == ""  # played clears it
    failed = _row(DeliveryState.SENT, reason="old")
    delivery.advance(failed, delivery.failed(T0, ""))
    assert failed.reason == ""  # a failure always says its own reason, even none


def test_sent_by_the_broker_and_refused_by_it() -> None:
    d = _row()
    tr, trail = delivery.advance(d, delivery.sent(T0, note=delivery.SENT_DIRECTLY))
    assert tr.move is Move.FORWARD
    assert (d.state, d.sent_at, d.reason) == ("sent", T0, "")
    assert (trail.state, trail.reason) == ("sent", delivery.SENT_DIRECTLY)
    refused = _row()
    delivery.advance(refused, delivery.broker_refused(T0, "Not authorized"))
    assert (refused.state, refused.failed_at) == ("failed", T0)
    assert refused.reason == "broker refused: Not authorized"


def test_a_puback_applied_after_the_clusters_answer_changes_nothing() -> None:
    d = _row(DeliveryState.RECEIVED)
    tr, trail = delivery.advance(d, delivery.sent(T0))
    assert tr.move is Move.REFUSED and d.state == "received" and d.sent_at is None
    assert trail.state == "sent"


@pytest.mark.parametrize("current", FORWARD[1:])
def test_an_interruption_is_noted_and_moves_nothing(current: DeliveryState) -> None:
    d = _row(current)
    tr = delivery.interruption(current, T0 + timedelta(seconds=1), T0, "")
    trail = delivery.apply(d, tr)
    assert tr.move is Move.NOTED
    assert (d.state, d.reason, d.updated_at) == (current.value, "interrupted", tr.at)
    assert (trail.state, trail.cluster_ts) == ("interrupted", T0)


def test_an_interruption_after_the_end_is_only_recorded() -> None:
    d = _row(DeliveryState.PLAYED)
    trail = delivery.apply(d, delivery.interruption(DeliveryState.PLAYED, T0, T0, "emergency"))
    assert (d.state, d.reason, d.updated_at) == ("played", "", T0)
    assert (trail.state, trail.reason) == ("interrupted", "emergency")


def test_every_ack_state_but_interrupted_maps_to_a_delivery_state() -> None:
    assert set(delivery.ACK_TO_STATE) == set(AckState) - {AckState.INTERRUPTED}


def test_a_note_moves_nothing() -> None:
    d = _row(DeliveryState.SENT)
    trail = delivery.note(d, "resent", T0, "cluster came back online")
    assert (d.state, d.updated_at) == ("sent", T0)
    assert (trail.delivery_id, trail.state, trail.reason) == (
        7,
        "resent",
        "cluster came back online",
    )
