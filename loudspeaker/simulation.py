"""Simulated clusters of the stored site: which ones, on which broker, in how many processes.

``loudspeaker simulate`` is its face. The clusters are real MQTT agents with pretend
amplifiers (:mod:`firmware_bridge.simulator`); above a few hundred they are spread over
processes, as one process under one GIL tops out there (docs/scaling.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from firmware_bridge.fleetproc import ProcessFleet
from firmware_bridge.mqtt import BrokerEndpoint
from firmware_bridge.simulator import Fleet
from loudspeaker.exceptions import ControllerNotRunning, LoudspeakerError
from loudspeaker.runtime import ControllerCard
from loudspeaker.site import SiteFile

CLUSTERS_PER_PROCESS = 500


@dataclass(frozen=True)
class SimulationOptions:
    """What ``loudspeaker simulate`` was asked for (see its options)."""

    clusters: int | None = None
    broker: str | None = None
    time_scale: float = 1.0
    heartbeat_s: float = 15.0
    processes: int | None = None
    broker_credentials_dir: Path | None = None
    keys_dir: Path | None = None


@dataclass(frozen=True)
class Simulation:
    """The fleet to run, checked: every file it needs is there."""

    site: str
    clusters: list[str]
    endpoint: BrokerEndpoint | None
    credentials_dir: Path | None
    keys_dir: Path | None  # None: the boxes do not verify signatures
    processes: int
    time_scale: float
    heartbeat_s: float

    def fleet(self, state_root: Path) -> Fleet | ProcessFleet:
        """The simulated boxes (not started); their state lives under ``state_root``."""
        if self.processes > 1:
            return ProcessFleet(
                self.site,
                self.clusters,
                self.endpoint,
                state_root,
                processes=self.processes,
                time_scale=self.time_scale,
                heartbeat_s=self.heartbeat_s,
                credentials_dir=self.credentials_dir,
                keys_dir=self.keys_dir,
            )
        return Fleet(
            self.site,
            self.clusters,
            self.endpoint,
            state_root,
            time_scale=self.time_scale,
            heartbeat_s=self.heartbeat_s,
            credentials_dir=self.credentials_dir,
            keys_dir=self.keys_dir,
        )


def plan(site: SiteFile, card: ControllerCard | None, options: SimulationOptions) -> Simulation:
    """The simulation ``options`` ask for, on the running controller's broker by default;
    ``LoudspeakerError`` says what to fix."""
    ids = [c.id for c in site.clusters if c.transport == "mqtt"]
    n = options.clusters
    if n is not None:
        if n > len(ids):
            raise LoudspeakerError(
                f"the site has {len(ids)} MQTT clusters; to simulate {n}, generate "
                f"and load a bigger one: loudspeaker site generate --clusters {n} "
                "-o big.toml && loudspeaker site load big.toml"
            )
        ids = ids[:n]
    broker, credentials_dir = options.broker, None
    if options.broker_credentials_dir is not None:
        if broker is not None:
            raise LoudspeakerError(
                "give --broker or --broker-credentials-dir, not both: each credentials file names "
                "its broker"
            )
        credentials_dir = credentials_dir_of(options.broker_credentials_dir.resolve(), ids)
    elif broker is None:
        if card is None:
            raise ControllerNotRunning("start `loudspeaker serve` first, or give --broker")
        broker = card.broker_url
    keys_dir = options.keys_dir
    if keys_dir is not None:
        keys_dir = keys_dir.resolve()
        missing = [c for c in ids if not (keys_dir / f"{c}.json").is_file()]
        if missing:
            raise LoudspeakerError(
                f"no key file for {', '.join(missing)} in {keys_dir}: write them with "
                f"`loudspeaker keys issue CLUSTER -o {keys_dir}/CLUSTER.json` (or keys export)"
            )
    procs = options.processes
    return Simulation(
        site=site.site.id,
        clusters=ids,
        endpoint=BrokerEndpoint.parse(broker) if broker is not None else None,
        credentials_dir=credentials_dir,
        keys_dir=keys_dir,
        processes=procs if procs is not None else max(1, -(-len(ids) // CLUSTERS_PER_PROCESS)),
        time_scale=options.time_scale,
        heartbeat_s=options.heartbeat_s,
    )


def credentials_dir_of(given: Path, clusters: list[str]) -> Path:
    """The directory holding CLUSTER.json: ``given`` or its ``credentials/``."""
    for d in (given / "credentials", given):
        if all((d / f"{c}.json").is_file() for c in clusters):
            return d
    missing = [c for c in clusters if not (given / f"{c}.json").is_file()]
    raise LoudspeakerError(
        f"no credentials file for {', '.join(missing)} in {given} (nor in "
        f"{given / 'credentials'}): run `loudspeaker broker config -o {given}` after "
        "`loudspeaker site load`"
    )
