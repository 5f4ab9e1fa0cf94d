"""The serial gateway: FM/wired clusters without IP, made to look like ordinary clusters.

One process on the commune-hall machine (``loudspeaker-gateway``) owns the serial port(s)
to the receivers (RS-485 bus or radio modem; :class:`~firmware_bridge.seriallink.SerialLink`
as bus master) and, for every site cluster with ``transport = "serial"`` and this
gateway's id, runs a stand-in: a real :class:`~firmware_bridge.agent.ClusterAgent` with its
own MQTT session, the same topics, retained online/offline status with a last will, the
same acknowledgement states, the same signature checks with that cluster's key file, and
heartbeats built from the receiver's own sensor readings. What differs is underneath:

- hardware: :class:`~firmware_bridge.mcu_hardware.McuHardware` on the shared bus at the
  receiver's address (relays, volume, sensors, self-test);
- audio: :class:`~firmware_bridge.hall.ReceiverSink`, which switches the receiver on, has
  the hall's one output play the item (once for every serial cluster that gets it at the
  same time) and switches the receiver off again.

The cluster list comes from the site file, so the gateway needs no database; it imports
nothing from the controller.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import signal
import sys
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_bridge.abc import AudioSink
from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.backoff import Backoff
from firmware_bridge.credentials import read_credentials
from firmware_bridge.exceptions import BridgeError, GatewayError
from firmware_bridge.hall import HallOutput, ReceiverSink
from firmware_bridge.mcu_hardware import McuHardware
from firmware_bridge.mqtt import BrokerEndpoint, MqttLoop
from firmware_bridge.protocol import ID_PATTERN
from firmware_bridge.seriallink import DEFAULT_RECONNECT, LinkState, SerialLink
from firmware_bridge.sinks import SimulatedSink, SystemPlayerSink

logger = logging.getLogger(__name__)

# A slow, shared bus: up to 4 transmissions, 150 ms apart at first (a 16-byte frame takes
# ~17 ms each way at 9600 baud), so a dead receiver costs the others at most ~0.9 s.
BUS_RETRANSMIT = Backoff(initial=0.15, factor=1.5, cap=0.4, max_attempts=4)


@dataclass(frozen=True)
class SerialCluster:
    """One FM/wired cluster behind this gateway."""

    id: str
    address: int
    port: str
    hamlet: str = ""
    name: str = ""


@dataclass(frozen=True)
class GatewaySite:
    """What a gateway needs from the site file: the site id and its own clusters."""

    site: str
    gateway: str
    clusters: tuple[SerialCluster, ...]

    @property
    def ports(self) -> list[str]:
        """Distinct serial ports, in the order clusters name them."""
        return list(dict.fromkeys(c.port for c in self.clusters))


def _id(value: object, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(ID_PATTERN, value):
        raise GatewayError(f"{where}: {value!r} is not an id (lowercase letters, digits, '-')")
    return value


def parse_gateway_site(
    data: Mapping[str, Any], gateway: str, *, source: str = "site file", port: str | None = None
) -> GatewaySite:
    """This gateway's clusters from a parsed site file; ``port`` overrides every cluster's.

    The controller validates the whole file (``loudspeaker site load``); this reads only the
    site id and the serial clusters of ``gateway``, and checks what the gateway relies on.
    """
    site = data.get("site")
    if not isinstance(site, Mapping):
        raise GatewayError(f"{source}: no [site] table")
    site_id = _id(site.get("id"), f"{source}: site.id")
    raw = data.get("clusters")
    if not isinstance(raw, list):
        raise GatewayError(f"{source}: no [[clusters]] entries")
    mine: list[SerialCluster] = []
    gateways: set[str] = set()
    seen: dict[tuple[str, int], str] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or entry.get("transport") != "serial":
            continue
        where = f"{source}: clusters[{i}]"
        cid = _id(entry.get("id"), f"{where}.id")
        gw = entry.get("gateway")
        if isinstance(gw, str):
            gateways.add(gw)
        if gw != gateway:
            continue
        address = entry.get("address")
        if isinstance(address, bool) or not isinstance(address, int) or not 1 <= address <= 247:
            raise GatewayError(f"{where} ({cid}).address: {address!r} is not a bus address 1-247")
        cport = port or entry.get("port")
        if not isinstance(cport, str) or not cport:
            raise GatewayError(
                f'{where} ({cid}): no serial port; add port = "/dev/serial/by-id/..." '
                "to the cluster or run the gateway with --port"
            )
        other = seen.get((cport, address))
        if other is not None:
            raise GatewayError(
                f"{where} ({cid}): address {address} on {cport} is already {other}'s; "
                "every receiver on one bus needs its own address"
            )
        seen[(cport, address)] = cid
        mine.append(
            SerialCluster(
                id=cid,
                address=address,
                port=cport,
                hamlet=str(entry.get("hamlet", "")),
                name=str(entry.get("name", "")),
            )
        )
    if not mine:
        known = ", ".join(sorted(gateways)) or "none"
        raise GatewayError(
            f"{source}: no serial clusters with gateway = {gateway!r} (gateways in the file: "
            f"{known})"
        )
    return GatewaySite(site=site_id, gateway=gateway, clusters=tuple(mine))


def load_gateway_site(path: Path, gateway: str, *, port: str | None = None) -> GatewaySite:
    """Read ``path`` and return this gateway's part of it; ``GatewayError`` says what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayError(f"cannot read site file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GatewayError(f"{path}: not valid TOML: {exc}") from None
    return parse_gateway_site(data, gateway, source=str(path), port=port)


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway runs (everything but the site and the audio output)."""

    endpoint: BrokerEndpoint
    state_dir: Path
    credentials_dir: Path | None = None  # <dir>/<cluster>.json from `loudspeaker broker config`
    keys_dir: Path | None = None  # <dir>/<cluster>.json; default <state_dir>/<cluster>/keys.json
    baudrate: int = 9600
    retransmit: Backoff = BUS_RETRANSMIT
    reconnect: Backoff = DEFAULT_RECONNECT
    heartbeat_s: float = 15.0
    keepalive: int = 15
    gather_s: float = 0.3
    sensor_cache_s: float = 2.0
    recheck_s: float = 10.0
    # As for the agent: every stand-in needs its key file unless this is a bench set-up.
    insecure_unsigned: bool = False


class Gateway:
    """The serial links, the hall output and one stand-in agent per serial cluster.

    ``start()`` opens the ports (in the background: a missing port is an alarm, not a
    crash), starts the hall output and connects every stand-in; ``stop()`` says offline for
    each and closes everything.
    """

    def __init__(self, site: GatewaySite, config: GatewayConfig, output: AudioSink) -> None:
        self.site = site
        self.config = config
        self.hall = HallOutput(output, gather_s=config.gather_s)
        self.links: dict[str, SerialLink] = {}
        self.hardware: dict[str, McuHardware] = {}
        self.agents: dict[str, ClusterAgent] = {}
        self._loop: MqttLoop | None = None

    def start(self) -> None:
        """Open the ports, start the hall output, start every stand-in."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.config
        for port in self.site.ports:
            link = SerialLink(
                port,
                baudrate=cfg.baudrate,
                retransmit=cfg.retransmit,
                reconnect=cfg.reconnect,
                on_state_change=functools.partial(self._link_state, port),
            )
            link.start()
            self.links[port] = link
        self.hall.start()
        self._loop = MqttLoop(name=f"gateway-{self.site.gateway}")
        self._loop.start()
        for cluster in self.site.clusters:
            self.agents[cluster.id] = self._stand_in(cluster, self._loop)
        logger.info(
            "gateway %s up: %d serial clusters on %s",
            self.site.gateway,
            len(self.site.clusters),
            ", ".join(self.site.ports),
        )

    def _stand_in(self, cluster: SerialCluster, loop: MqttLoop) -> ClusterAgent:
        cfg = self.config
        hardware = McuHardware(
            link=self.links[cluster.port],
            address=cluster.address,
            cache_s=cfg.sensor_cache_s,
            recheck_s=cfg.recheck_s,
            connect_wait_s=0.5,
        )
        self.hardware[cluster.id] = hardware
        sink = ReceiverSink(cluster.id, self.hall, hardware)
        endpoint = cfg.endpoint
        if cfg.credentials_dir is not None:
            endpoint = read_credentials(cfg.credentials_dir / f"{cluster.id}.json")
        state_dir = cfg.state_dir / cluster.id
        state_dir.mkdir(parents=True, exist_ok=True)
        agent = ClusterAgent(
            AgentConfig(
                site=self.site.site,
                cluster=cluster.id,
                endpoint=endpoint,
                state_dir=state_dir,
                keepalive=cfg.keepalive,
                heartbeat_s=cfg.heartbeat_s,
                keys_file=cfg.keys_dir / f"{cluster.id}.json" if cfg.keys_dir else None,
                insecure_unsigned=cfg.insecure_unsigned,
            ),
            sink,
            loop=loop,
            hardware=hardware,
            # The hall sink switches the receiver itself and fails the item if it cannot.
            auto_power=False,
        )
        sink.bind(agent.player)
        agent.start()
        return agent

    def wait_connected(self, timeout: float) -> bool:
        """Wait until every stand-in is connected to the broker."""
        return all(a.link.connected.wait(timeout) for a in self.agents.values())

    def stop(self) -> None:
        """Every stand-in says offline; then the hall output, the MQTT loop and the ports."""
        for agent in self.agents.values():
            agent.stop()
        self.hall.stop()
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        for link in self.links.values():
            link.stop()

    def _link_state(self, port: str, state: LinkState) -> None:
        if state is LinkState.DISCONNECTED:
            names = [c.id for c in self.site.clusters if c.port == port]
            logger.error(
                "serial port %s lost: clusters %s cannot play until it is back",
                port,
                ", ".join(names),
            )


# -- loudspeaker-gateway -----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loudspeaker-gateway",
        description="Serial gateway: makes FM/wired clusters on an RS-485 bus or radio modem "
        "appear to the controller as ordinary clusters, and plays their audio through the "
        "commune hall's output.",
    )
    p.add_argument("--site-file", type=Path, required=True, help="the site TOML file")
    p.add_argument("--gateway", required=True, help="this gateway's id (clusters' `gateway`)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT")
    p.add_argument(
        "--broker-credentials-dir",
        type=Path,
        default=None,
        help="directory of CLUSTER.json credentials files from `loudspeaker broker config` "
        "(one MQTT identity per serial cluster)",
    )
    p.add_argument(
        "--keys-dir",
        type=Path,
        default=None,
        help="directory of CLUSTER.json command-signing key files "
        "(default STATE_DIR/CLUSTER/keys.json)",
    )
    p.add_argument(
        "--insecure-unsigned",
        action="store_true",
        help="bench set-ups only: run serial clusters without key files and play every "
        "command without checking its signature (without this flag a missing key file "
        "stops the gateway)",
    )
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/loudspeaker-gateway"))
    p.add_argument(
        "--port",
        default=None,
        help="serial port for every cluster of this gateway (overrides the site file's `port`)",
    )
    p.add_argument("--baud", type=int, default=9600, help="bus speed (default 9600)")
    p.add_argument("--sink", choices=("system", "simulated"), default="system")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated sink only")
    p.add_argument("--heartbeat", type=float, default=15.0, help="heartbeat interval, seconds")
    p.add_argument("--keepalive", type=int, default=15, help="MQTT keepalive, seconds")
    p.add_argument(
        "--gather",
        type=float,
        default=0.3,
        help="seconds an item waits for the same item from other serial clusters",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``loudspeaker-gateway``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        site = load_gateway_site(args.site_file, args.gateway, port=args.port)
        output: AudioSink
        if args.sink == "simulated":
            output = SimulatedSink(args.state_dir / "hall-plays.jsonl", time_scale=args.time_scale)
        else:
            output = SystemPlayerSink()
        config = GatewayConfig(
            endpoint=BrokerEndpoint.parse(args.broker),
            state_dir=args.state_dir,
            credentials_dir=args.broker_credentials_dir,
            keys_dir=args.keys_dir,
            baudrate=args.baud,
            heartbeat_s=args.heartbeat,
            keepalive=args.keepalive,
            gather_s=args.gather,
            insecure_unsigned=args.insecure_unsigned,
        )
        args.state_dir.mkdir(parents=True, exist_ok=True)
        gateway = Gateway(site, config, output)
        gateway.start()
    except (BridgeError, ValueError, OSError) as exc:
        print(f"loudspeaker-gateway: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    gateway.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
