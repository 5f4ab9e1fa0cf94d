"""The inbound router (loudspeaker/inbound.py): decode once, route by kind, count drops."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from firmware_bridge.protocol import (
    Ack,
    AckState,
    ControlResult,
    Heartbeat,
    Kind,
    Status,
    encode,
    topic,
)
from loudspeaker.inbound import (
    AckIn,
    DropReason,
    Drops,
    HeartbeatIn,
    InboundEvent,
    InboundRouter,
    ResultIn,
    StatusIn,
)

SITE = "luc-binh"
T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
ACK = Ack(cluster="lb-01", command="c" * 12, broadcast="b" * 12, state=AckState.PLAYED, ts=T0)
STATUS = Status(cluster="lb-01", state="online", agent="sim")
BEAT = Heartbeat(cluster="lb-01", ts=T0, seq=1, boot_id="b", interval_s=30, uptime_s=1)
RESULT = ControlResult(cluster="lb-01", command="r" * 12, type="volume", ok=True, ts=T0)


class Workers:
    """Records what each registered handler received."""

    def __init__(self, router: InboundRouter) -> None:
        self.got: dict[str, list[InboundEvent]] = {
            "dispatcher": [],
            "runner": [],
            "health": [],
        }
        router.on_ack(self.got["dispatcher"].append)
        router.on_ack(self.got["runner"].append)
        router.on_status(self.got["dispatcher"].append)
        router.on_status(self.got["health"].append)
        router.on_heartbeat(self.got["health"].append)
        router.on_result(self.got["health"].append)


@pytest.fixture
def router() -> InboundRouter:
    return InboundRouter(SITE, clock=lambda: T0)


def test_each_kind_is_decoded_once_and_handed_to_its_workers(router: InboundRouter) -> None:
    workers = Workers(router)
    router.on_message(topic(SITE, "lb-01", Kind.ACK), encode(ACK))
    router.on_message(topic(SITE, "lb-01", Kind.STATUS), encode(STATUS))
    router.on_message(topic(SITE, "lb-01", Kind.HEALTH), encode(BEAT))
    router.on_message(topic(SITE, "lb-01", Kind.RESULT), encode(RESULT))
    assert workers.got["dispatcher"] == [AckIn(ACK, T0), StatusIn(STATUS, T0)]
    assert workers.got["runner"] == [AckIn(ACK, T0)]
    assert workers.got["health"] == [
        StatusIn(STATUS, T0),
        HeartbeatIn(BEAT, T0),
        ResultIn(RESULT, T0),
    ]
    # The very same object for every worker: decoded once.
    assert workers.got["dispatcher"][0] is workers.got["runner"][0]
    assert router.drops.total() == 0


@pytest.mark.parametrize(
    ("topic_name", "payload", "kind", "reason"),
    [
        ("loudspeaker/luc-binh/lb-01/ack", b"{not json", Kind.ACK, DropReason.MALFORMED),
        ("loudspeaker/luc-binh/lb-01/ack", b"\xff" * 5, Kind.ACK, DropReason.MALFORMED),
        ("loudspeaker/luc-binh/lb-02/ack", encode(ACK), Kind.ACK, DropReason.CLUSTER_MISMATCH),
        (
            "loudspeaker/luc-binh/lb-01/status",
            b'{"v":1,"cluster":"lb-01","state":"sideways"}',
            Kind.STATUS,
            DropReason.MALFORMED,
        ),
        ("loudspeaker/luc-binh/lb-01/health", b'{"v":1}', Kind.HEALTH, DropReason.MALFORMED),
        ("loudspeaker/luc-binh/lb-02/result", encode(RESULT), Kind.RESULT, "cluster-mismatch"),
        ("loudspeaker/other-site/lb-01/ack", encode(ACK), Kind.ACK, DropReason.FOREIGN_SITE),
        ("loudspeaker/luc-binh/LB_01/ack", encode(ACK), Kind.ACK, DropReason.BAD_TOPIC),
        ("loudspeaker/luc-binh/lb-01/bogus", b"{}", None, DropReason.BAD_TOPIC),
    ],
)
def test_what_fails_is_dropped_counted_by_reason_and_routed_nowhere(
    router: InboundRouter,
    topic_name: str,
    payload: bytes,
    kind: Kind | None,
    reason: str,
) -> None:
    workers = Workers(router)
    router.on_message(topic_name, payload)
    assert all(not got for got in workers.got.values())
    assert router.drops.by_reason() == {(kind.value if kind else "", str(reason)): 1}


def test_a_cleared_retained_status_is_neither_routed_nor_dropped(router: InboundRouter) -> None:
    workers = Workers(router)
    router.on_message(topic(SITE, "lb-01", Kind.STATUS), b"")
    assert all(not got for got in workers.got.values())
    assert router.drops.total() == 0


def test_a_failing_handler_does_not_reach_the_loop_nor_the_other_workers(
    router: InboundRouter,
) -> None:
    def broken(_event: AckIn) -> None:
        raise RuntimeError("bug")

    got: list[AckIn] = []
    router.on_ack(broken)
    router.on_ack(got.append)
    router.on_message(topic(SITE, "lb-01", Kind.ACK), encode(ACK))
    assert got == [AckIn(ACK, T0)]


def test_drops_add_up_by_kind() -> None:
    drops = Drops()
    drops.count(Kind.ACK, DropReason.MALFORMED)
    drops.count(Kind.STATUS, DropReason.UNKNOWN_CLUSTER)
    drops.count(Kind.HEALTH, DropReason.MALFORMED)
    drops.count(None, DropReason.BAD_TOPIC)
    assert drops.total() == 4
    assert drops.total((Kind.ACK, Kind.STATUS)) == 2
    assert drops.total((Kind.HEALTH, Kind.RESULT)) == 1
