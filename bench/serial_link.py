"""Serial link benchmark: request round trip and frame rate over a pty, clean and corrupted.

Run: PYTHONPATH=. python bench/serial_link.py [--count 5000] [--corrupt-count 1000]

Prints one JSON object. The emulator runs in the same process (its own thread) at the
other end of a real pty; the pty ignores the baud rate, so this measures the software
path, not a UART. Retransmission uses the link's default policy (first timeout 100 ms).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_bridge.mcu import McuClient
from firmware_bridge.mcu_emulator import McuEmulator
from firmware_bridge.seriallink import LinkState, SerialLink


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def executed_as_sent(sent: list[int], failed: set[int], executed: list[int]) -> bool:
    """True if the MCU executed every successful request once, in order, and nothing else.

    A failed request may or may not have executed (its answers may be what was lost).
    """
    position = 0
    for index, value in enumerate(sent):
        if position < len(executed) and executed[position] == value:
            position += 1
        elif index not in failed:
            return False
    return position == len(executed)


def run(count: int, corrupt_probability: float, seed: int) -> dict[str, Any]:
    with McuEmulator(seed=seed) as emulator, SerialLink(emulator.port) as link:
        if not link.wait_for_state(LinkState.CONNECTED, timeout=5):
            raise SystemExit(f"link did not connect to {emulator.port}")
        client = McuClient(link)
        for _ in range(50):  # warm-up
            client.volume()
        emulator.faults.corrupt_probability = corrupt_probability
        before = link.stats
        already_executed = len(emulator.executed)
        round_trips_us: list[float] = []
        failed: set[int] = set()
        started = time.perf_counter()
        for index in range(count):
            t0 = time.perf_counter_ns()
            try:
                client.set_volume(index % 101)
            except Exception:
                failed.add(index)
            round_trips_us.append((time.perf_counter_ns() - t0) / 1000)
        elapsed = time.perf_counter() - started
        after = link.stats
        executed = [c.payload[0] for c in emulator.executed[already_executed:]]
    frames = (after.frames_sent - before.frames_sent) + (
        after.frames_received - before.frames_received
    )
    return {
        "requests": count,
        "corrupt_probability_per_byte": corrupt_probability,
        "round_trip_us_p50": round(percentile(round_trips_us, 0.50), 1),
        "round_trip_us_p95": round(percentile(round_trips_us, 0.95), 1),
        "round_trip_us_mean": round(statistics.fmean(round_trips_us), 1),
        "requests_per_s": round(count / elapsed),
        "frames_per_s": round(frames / elapsed),
        "retransmissions": after.retransmissions - before.retransmissions,
        "bad_frames_at_master": after.bad_frames - before.bad_frames,
        "bad_frames_at_mcu": emulator.bad_frames,
        "failed_requests": len(failed),
        "executed_exactly_as_sent": executed_as_sent(
            [index % 101 for index in range(count)], failed, executed
        ),
        "seconds": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Serial link benchmark over a pty.")
    parser.add_argument("--count", type=int, default=5000, help="requests without faults")
    parser.add_argument(
        "--corrupt-count", type=int, default=1000, help="requests with 1 %% byte corruption"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = {
        "command": " ".join(["PYTHONPATH=. python bench/serial_link.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "clean": run(args.count, 0.0, args.seed),
        "corrupt_1pct": run(args.corrupt_count, 0.01, args.seed),
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
