"""Emergency on air in the production shape, with and without an attack (issue 13).

Deploys what the field suite deploys (tests/field/deployment.py: generated TLS+ACL
mosquitto, ``serve --broker-credentials``, ten simulated boxes with their own passwords and
keys, one serial cluster behind the gateway), then triggers ``loudspeaker emergency
--siren`` to every hamlet but the attacker's (nine clusters) ``--runs`` times, first
undisturbed, then while lb-01's password is used to attack (other client ids, other boxes'
topics, 100 MB and 10 MB retained publishes: tests/field/attack.py). Each figure is the
time from the CLI process's start to the moment the last target started playing, read
from the boxes' own play logs (same machine, same clock).

    .venv/bin/python bench/field.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlmodel import Session, select  # noqa: E402

from loudspeaker.models import Delivery  # noqa: E402
from tests.field.attack import BoxPasswordAttack  # noqa: E402
from tests.field.deployment import CLUSTERS, Deployment  # noqa: E402
from tests.helpers import wait_until  # noqa: E402

ATTACKER = "lb-01"
HAMLETS = ["na-lang", "khuoi-chu", "pac-cap", "na-cang", "ban-chieng", "na-pai", "coc-xa"]
TARGETS = [c for c in CLUSTERS if c not in ("lb-01", "lb-02")]


def one_emergency(d: Deployment, n: int) -> float:
    """Seconds from the CLI's start to the last target playing."""
    before = {c: len(d.plays(c)) for c in TARGETS}
    args = [x for h in HAMLETS for x in ("--hamlet", h)]
    t0 = time.time()
    proc = d.cli("emergency", f"Đo thử {n}", "--siren", *args, "--json", "--wait", "0")
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    bid = json.loads(proc.stdout)["id"]
    if not wait_until(lambda: all(len(d.plays(c)) > before[c] for c in TARGETS), 60):
        raise RuntimeError(f"not every target played emergency {bid}")
    started = [
        datetime.fromisoformat(d.plays(c)[before[c]]["started_at"]).timestamp() for c in TARGETS
    ]

    def finished() -> bool:
        with Session(d.engine) as s:
            rows = s.exec(select(Delivery).where(Delivery.broadcast_id == bid)).all()
            return bool(rows) and all(r.state == "played" for r in rows)

    # Let it finish everywhere before the next one (an emergency never interrupts another).
    if not wait_until(finished, 60):
        raise RuntimeError(f"emergency {bid} did not finish everywhere")
    return round(max(started) - t0, 3)


def summary(values: list[float]) -> dict[str, object]:
    return {
        "median_s": round(statistics.median(values), 3),
        "max_s": max(values),
        "values_s": values,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-field-") as tmp:
        d = Deployment(Path(tmp))
        d.start()
        try:
            quiet = [one_emergency(d, i) for i in range(args.runs)]
            attack = BoxPasswordAttack(d, ATTACKER)
            attack.start()
            try:
                if not attack.wait_rounds(1, 120):
                    raise RuntimeError("the attack did not get going")
                attacked = [one_emergency(d, args.runs + i) for i in range(args.runs)]
            finally:
                log = attack.stop()
        finally:
            d.stop()
    print(
        json.dumps(
            {
                "bench": "field",
                "shape": "generated TLS+ACL mosquitto, serve --broker-credentials, "
                "10 simulated boxes (own password and key), 1 serial cluster via the gateway",
                "targets": len(TARGETS),
                "audio": "siren (prepared on the controller after the first run)",
                "measure": "CLI process start -> last target playing (boxes' play logs)",
                "runs": args.runs,
                "without_attack": summary(quiet),
                "with_attack": summary(attacked),
                "attack_rounds": log.rounds,
                "attack_big_publishes": log.big,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
