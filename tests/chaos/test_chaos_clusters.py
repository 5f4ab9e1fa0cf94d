"""Clusters dropping off and coming back during a broadcast (real agent processes)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlmodel import Session

from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from loudspeaker.models import ClusterStatus
from tests.chaos.chaos_support import (
    AgentProcess,
    assert_correct,
    finished,
    queue_broadcast,
    states,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_clusters_killed_hung_and_returning_during_a_broadcast(
    tmp_path: Path, controller: Controller, mosquitto: EmbeddedBroker
) -> None:
    assert controller.dispatcher is not None
    engine = controller.dispatcher.engine
    root = tmp_path / "agents"
    # killed mid-play and restarted / hung mid-play (SIGSTOP) and resumed /
    # down before the dispatch and back after it / down for good.
    killed, hung, late, gone = (
        AgentProcess(c, mosquitto.endpoint.url, root / c, time_scale=1.0, keepalive=2)
        for c in ("lb-01", "lb-02", "lb-03", "lb-04")
    )
    agents = (killed, hung, late, gone)

    def online(cluster: str) -> bool:
        with Session(engine) as s:
            st = s.get(ClusterStatus, cluster)
            return st is not None and st.online

    try:
        for a in agents:
            a.start()
        assert wait_until(lambda: all(online(a.cluster) for a in agents), 20)
        late.signal(signal.SIGKILL)
        gone.signal(signal.SIGKILL)
        assert wait_until(lambda: not online("lb-03") and not online("lb-04"), 10)

        # Long enough that each box is caught mid-play below: every step waits on the
        # state the box reported, one box at a time, never on both playing at once.
        bid, sha = queue_broadcast(
            engine,
            controller.settings.media_dir,
            tmp_path,
            seconds=8.0,
            freq=550,
            target="cluster:lb-01,cluster:lb-02,cluster:lb-03,cluster:lb-04",
        )
        controller.dispatcher.poke()

        def state(cluster: str) -> str:
            return states(engine, bid)[cluster].state

        def summary() -> dict[str, tuple[str, str]]:
            return {c: (d.state, d.reason) for c, d in states(engine, bid).items()}

        assert wait_until(lambda: state("lb-01") == "playing", 20), summary()
        killed.signal(signal.SIGKILL)
        assert wait_until(lambda: state("lb-02") == "playing", 20), summary()
        hung.signal(signal.SIGSTOP)
        late.start()
        # The killed box's will comes at once; the broker's keepalive notices the hung one.
        assert wait_until(lambda: state("lb-01") == "unreachable", 15), summary()
        assert wait_until(lambda: state("lb-02") == "unreachable", 15), summary()
        assert "offline while playing" in states(engine, bid)["lb-02"].reason
        killed.start()
        hung.signal(signal.SIGCONT)
        # "unreachable" is final but not the last word: a late "played" replaces it.
        back = ("lb-01", "lb-02", "lb-03")
        assert wait_until(
            lambda: finished(engine, bid) and all(state(c) == "played" for c in back), 40
        ), summary()
        verdict = assert_correct(engine, bid, sha, root, must_play=back)
        assert verdict.state_of("lb-04") == "unreachable"
        assert "no answer" in verdict.rows["lb-04"][1]
    finally:
        for a in agents:
            a.stop()
