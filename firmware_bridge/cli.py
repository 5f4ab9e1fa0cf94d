"""``loudspeaker-agent``: run the cluster agent (or a few simulated ones) on a box."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from firmware_bridge.abc import AudioSink
from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.credentials import read_credentials
from firmware_bridge.exceptions import BridgeError
from firmware_bridge.mcu_hardware import McuHardware
from firmware_bridge.mqtt import BrokerEndpoint, MqttLoop
from firmware_bridge.sinks import SimulatedSink, SystemPlayerSink

logger = logging.getLogger("firmware_bridge.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loudspeaker-agent",
        description="Cluster agent: receives broadcast commands over MQTT and plays them.",
    )
    p.add_argument("--site", required=True, help="site id, e.g. luc-binh")
    p.add_argument(
        "--cluster",
        required=True,
        action="append",
        help="cluster id (repeat to run several simulated clusters in one process)",
    )
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/loudspeaker-agent"))
    p.add_argument("--sink", choices=("system", "simulated"), default="system")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="simulated sink only: play each item for duration x this factor",
    )
    p.add_argument("--keepalive", type=int, default=15, help="MQTT keepalive, seconds")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--keys-file",
        type=Path,
        default=None,
        help="command-signing keys (default STATE_DIR/keys.json; see docs/security.md)",
    )
    p.add_argument(
        "--insecure-unsigned",
        action="store_true",
        help="bench boxes only: run without a key file and play every command without "
        "checking its signature (without this flag a missing key file stops the agent)",
    )
    p.add_argument(
        "--broker-credentials",
        type=Path,
        default=None,
        help="JSON file (mode 0600) from `loudspeaker broker config`: url, username, "
        "password, tls_ca; keeps the password off the command line",
    )
    p.add_argument(
        "--mcu",
        metavar="PORT",
        default=None,
        help="serial port of the box's microcontroller (relays, volume, sensors); "
        "give a stable path such as /dev/serial/by-id/...; without it the box has no MCU",
    )
    p.add_argument("--mcu-address", type=int, default=1, help="the MCU's address (default 1)")
    p.add_argument("--mcu-baud", type=int, default=115200, help="MCU link speed (default 115200)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``loudspeaker-agent``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.sink == "system" and len(args.cluster) > 1:
        print("only one cluster per box with --sink system", file=sys.stderr)
        return 2
    if args.mcu is not None and len(args.cluster) > 1:
        print("--mcu drives one box's microcontroller: give one --cluster", file=sys.stderr)
        return 2
    if not 1 <= args.mcu_address <= 247:
        print(f"--mcu-address must be 1-247, not {args.mcu_address}", file=sys.stderr)
        return 2
    loop = MqttLoop()
    agents: list[ClusterAgent] = []
    try:
        endpoint = BrokerEndpoint.parse(args.broker)
        if args.broker_credentials is not None:
            endpoint = read_credentials(args.broker_credentials)
        loop.start()
        for cluster in args.cluster:
            state_dir = args.state_dir / cluster if len(args.cluster) > 1 else args.state_dir
            sink: AudioSink
            if args.sink == "simulated":
                sink = SimulatedSink(state_dir / "plays.jsonl", time_scale=args.time_scale)
            else:
                sink = SystemPlayerSink()
            config = AgentConfig(
                site=args.site,
                cluster=cluster,
                endpoint=endpoint,
                state_dir=state_dir,
                keepalive=args.keepalive,
                keys_file=args.keys_file,
                insecure_unsigned=args.insecure_unsigned,
            )
            hardware = None
            if args.mcu is not None:
                hardware = McuHardware(args.mcu, address=args.mcu_address, baudrate=args.mcu_baud)
            agent = ClusterAgent(config, sink, loop=loop, hardware=hardware)
            agent.start()
            agents.append(agent)
    except BridgeError as exc:
        # Agents already started (several simulated clusters) say offline before we go.
        for agent in agents:
            agent.stop()
        loop.stop()
        print(f"loudspeaker-agent: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    for agent in agents:
        agent.stop()
    loop.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
