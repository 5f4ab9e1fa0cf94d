"""Many simulated clusters in one process, each its own MQTT session, same protocol.

The agents are the real :class:`~firmware_bridge.agent.ClusterAgent` with a
:class:`~firmware_bridge.sinks.SimulatedSink`; only the amplifier is pretend. Their MQTT
clients are spread over a few :class:`~firmware_bridge.mqtt.MqttLoop` threads.

In the production shape (docs/security.md) every box logs in with its own password and
verifies commands with its own key: give ``credentials_dir`` (``CLUSTER.json`` files as
``loudspeaker broker config`` writes them under ``credentials/``) and ``keys_dir``
(``CLUSTER.json`` key files as ``loudspeaker keys issue|export CLUSTER -o`` write them).
Without ``keys_dir`` the simulated boxes do not verify signatures (a bench set-up).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.credentials import read_credentials
from firmware_bridge.exceptions import BridgeError
from firmware_bridge.hardware import FaultySimulatedSink, SimulatedHardware
from firmware_bridge.mqtt import BrokerEndpoint, MqttLoop

logger = logging.getLogger(__name__)


class Fleet:
    """A set of simulated clusters. ``start()`` connects them all."""

    def __init__(
        self,
        site: str,
        clusters: Sequence[str],
        endpoint: BrokerEndpoint | None,
        state_root: Path,
        *,
        time_scale: float = 1.0,
        links_per_loop: int = 250,
        keepalive: int = 15,
        heartbeat_s: float = 15.0,
        credentials_dir: Path | None = None,
        keys_dir: Path | None = None,
    ) -> None:
        if endpoint is None and credentials_dir is None:
            raise BridgeError("simulated clusters need a broker URL or a credentials directory")
        self.site = site
        self.clusters = list(clusters)
        self.endpoint = endpoint
        self.credentials_dir = credentials_dir
        self.keys_dir = keys_dir
        self.state_root = state_root
        self.time_scale = time_scale
        self.links_per_loop = links_per_loop
        self.keepalive = keepalive
        self.agents: dict[str, ClusterAgent] = {}
        self._loops: list[MqttLoop] = []
        self.heartbeat_s = heartbeat_s
        self.hardware: dict[str, SimulatedHardware] = {}
        self._flappers: dict[str, threading.Event] = {}

    def start(self) -> None:
        """Start every agent (connection happens in the background)."""
        for i, cluster in enumerate(self.clusters):
            if i % self.links_per_loop == 0:
                loop = MqttLoop(name=f"fleet-loop-{len(self._loops)}")
                loop.start()
                self._loops.append(loop)
            self.hardware[cluster] = SimulatedHardware(seed=i)
            self.start_agent(cluster, self._loops[-1])

    def start_agent(self, cluster: str, loop: MqttLoop | None = None) -> ClusterAgent:
        """Start (or restart, after :meth:`stop_agent`) one cluster's agent."""
        if loop is None:
            index = self.clusters.index(cluster) // self.links_per_loop
            loop = self._loops[index]
        state_dir = self.state_root / cluster
        state_dir.mkdir(parents=True, exist_ok=True)
        hardware = self.hardware[cluster]
        agent = ClusterAgent(
            AgentConfig(
                site=self.site,
                cluster=cluster,
                endpoint=self.endpoint_of(cluster),
                state_dir=state_dir,
                keepalive=self.keepalive,
                heartbeat_s=self.heartbeat_s,
                keys_file=self.keys_dir / f"{cluster}.json" if self.keys_dir else None,
                # Without key files the simulated boxes are a bench set-up, said explicitly.
                insecure_unsigned=self.keys_dir is None,
            ),
            FaultySimulatedSink(hardware, state_dir / "plays.jsonl", time_scale=self.time_scale),
            loop=loop,
            hardware=hardware,
        )
        agent.start()
        self.agents[cluster] = agent
        return agent

    def endpoint_of(self, cluster: str) -> BrokerEndpoint:
        """The broker and login of one cluster: its own credentials file, if given."""
        if self.credentials_dir is not None:
            return read_credentials(self.credentials_dir / f"{cluster}.json")
        assert self.endpoint is not None  # checked in __init__
        return self.endpoint

    def stop_agent(self, cluster: str) -> None:
        """Stop one cluster's agent (it says offline), as a power cut with a UPS would."""
        self.clear(cluster, "flapping_link")
        self.agents[cluster].stop()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until every agent is connected; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        for agent in self.agents.values():
            if not agent.link.connected.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def stop(self) -> None:
        """Stop every agent (each says offline) and the loops."""
        for flapping in self._flappers.values():
            flapping.set()
        for hardware in self.hardware.values():
            hardware.clear()
        for agent in self.agents.values():
            agent.stop()
        for loop in self._loops:
            loop.stop()

    # -- fault injection --------------------------------------------------------------------

    def inject(self, cluster: str, fault: str, value: float | None = None) -> None:
        """Inject a fault into one cluster: a hardware fault by name, or ``flapping_link``."""
        if fault == "flapping_link":
            self.flap(cluster)
            return
        self.hardware[cluster].inject(fault, value)

    def clear(self, cluster: str, fault: str | None = None) -> None:
        """Clear one fault (or all) of a cluster."""
        if fault in (None, "flapping_link"):
            stop = self._flappers.pop(cluster, None)
            if stop is not None:
                stop.set()
            if fault is not None:
                return
        self.hardware[cluster].clear(fault)

    def flap(self, cluster: str, period_s: float = 1.0, times: int = 1000) -> None:
        """Drop a cluster's connection every ``period_s`` seconds (a flaky 4G link)."""
        agent = self.agents[cluster]
        stop = threading.Event()
        self._flappers[cluster] = stop

        def run() -> None:
            for _ in range(times):
                if agent.link.connected.is_set():
                    agent.link.drop()
                if stop.wait(period_s):
                    return

        threading.Thread(target=run, name=f"flap-{cluster}", daemon=True).start()
