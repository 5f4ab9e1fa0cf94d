"""Many simulated clusters in one process, each its own MQTT session, same protocol.

The agents are the real :class:`~firmware_bridge.agent.ClusterAgent` with a
:class:`~firmware_bridge.sinks.SimulatedSink`; only the amplifier is pretend. Their MQTT
clients are spread over a few :class:`~firmware_bridge.mqtt.MqttLoop` threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.mqtt import BrokerEndpoint, MqttLoop
from firmware_bridge.sinks import SimulatedSink

logger = logging.getLogger(__name__)


class Fleet:
    """A set of simulated clusters. ``start()`` connects them all."""

    def __init__(
        self,
        site: str,
        clusters: Sequence[str],
        endpoint: BrokerEndpoint,
        state_root: Path,
        *,
        time_scale: float = 1.0,
        links_per_loop: int = 250,
        keepalive: int = 15,
    ) -> None:
        self.site = site
        self.clusters = list(clusters)
        self.endpoint = endpoint
        self.state_root = state_root
        self.time_scale = time_scale
        self.links_per_loop = links_per_loop
        self.keepalive = keepalive
        self.agents: dict[str, ClusterAgent] = {}
        self._loops: list[MqttLoop] = []

    def start(self) -> None:
        """Start every agent (connection happens in the background)."""
        for i, cluster in enumerate(self.clusters):
            if i % self.links_per_loop == 0:
                loop = MqttLoop(name=f"fleet-loop-{len(self._loops)}")
                loop.start()
                self._loops.append(loop)
            state_dir = self.state_root / cluster
            state_dir.mkdir(parents=True, exist_ok=True)
            agent = ClusterAgent(
                AgentConfig(
                    site=self.site,
                    cluster=cluster,
                    endpoint=self.endpoint,
                    state_dir=state_dir,
                    keepalive=self.keepalive,
                ),
                SimulatedSink(state_dir / "plays.jsonl", time_scale=self.time_scale),
                loop=self._loops[-1],
            )
            agent.start()
            self.agents[cluster] = agent

    def wait_connected(self, timeout: float) -> bool:
        """Wait until every agent is connected; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        for agent in self.agents.values():
            if not agent.link.connected.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def stop(self) -> None:
        """Stop every agent (each says offline) and the loops."""
        for agent in self.agents.values():
            agent.stop()
        for loop in self._loops:
            loop.stop()
