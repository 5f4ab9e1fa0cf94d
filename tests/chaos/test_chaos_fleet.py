"""A generated site and a fleet in several processes: what ``simulate --clusters N`` runs."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loudspeaker.db import make_engine
from loudspeaker.exceptions import SiteError
from loudspeaker.site import parse_site
from loudspeaker.sitegen import cluster_ids, generate_site_text
from tests.chaos.chaos_support import (
    ROOT,
    ServeProcess,
    assert_correct,
    finished,
    online_count,
    queue_broadcast,
)
from tests.helpers import stop_process, wait_until


def test_generated_site_is_valid_and_sized() -> None:
    site = parse_site(generate_site_text(25, site_id="big", hamlet_size=10))
    assert [c.id for c in site.clusters] == cluster_ids(25)
    assert len(site.hamlets) == 3
    assert {c.hamlet for c in site.clusters} == {h.id for h in site.hamlets}
    with pytest.raises(SiteError, match="--clusters must be between 1 and"):
        generate_site_text(0)
    with pytest.raises(SiteError, match=r"site\.id"):
        generate_site_text(3, site_id="Not An Id")


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--data-dir", str(data), *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.integration
def test_simulate_a_generated_site_in_several_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    site_file = tmp_path / "big.toml"
    gen = _cli(data, "site", "generate", "--clusters", "30", "-o", str(site_file), "--json")
    assert gen.returncode == 0, gen.stderr
    assert _cli(data, "site", "generate", "--clusters", "30", "-o", str(site_file)).returncode == 1
    assert _cli(data, "site", "load", str(site_file)).returncode == 0
    too_many = _cli(data, "simulate", "--clusters", "31", "--broker", "mqtt://127.0.0.1:1")
    assert too_many.returncode == 1 and "site generate --clusters 31" in too_many.stderr

    db_url = f"sqlite:///{data / 'loudspeaker.db'}"
    engine = make_engine(db_url)
    serve = ServeProcess(data, db_url, None)
    sim: subprocess.Popen[bytes] | None = None
    try:
        card = serve.start()
        log = (tmp_path / "simulate.log").open("wb")
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "--data-dir",
                str(data),
                "simulate",
                "--processes",
                "3",
                "--time-scale",
                "0.05",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()

        assert wait_until(lambda: online_count(engine) == 30, 30), (
            tmp_path / "simulate.log"
        ).read_text()
        children = [
            int(x)
            for task in Path(f"/proc/{sim.pid}/task").iterdir()
            for x in (task / "children").read_text().split()
        ]
        assert len(children) == 3
        bid, sha = queue_broadcast(engine, data / "media", tmp_path, seconds=1.0, freq=570)
        card.poke()
        assert wait_until(lambda: finished(engine, bid), 30)
        assert_correct(engine, bid, sha, data / "simulated")
        sim.send_signal(signal.SIGTERM)
        sim.wait(30)
        assert sim.returncode == 0
        # Every child went away with it, and said so: all clusters offline.
        assert wait_until(lambda: not any(_alive(p) for p in children), 10)
        assert wait_until(lambda: online_count(engine) == 0, 10)
    finally:
        stop_process(sim)
        serve.stop()
        engine.dispose()
