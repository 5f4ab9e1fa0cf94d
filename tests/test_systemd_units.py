"""The systemd units in docs/systemd/ are valid and hardened (docs/security.md, "Deploying").

``systemd-analyze verify`` checks every key and that ExecStart's program exists, so the
test verifies a copy whose /opt/loudspeaker/.venv/bin/ points at this venv. It exits 0
on unknown keys and bad values (it only warns), so its output must be empty too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

UNITS = Path(__file__).resolve().parents[1] / "docs" / "systemd"
INSTALLED_BIN = "/opt/loudspeaker/.venv/bin/"
NAMES = ("loudspeaker.service", "loudspeaker-agent.service", "loudspeaker-gateway.service")
PROGRAM = {
    "loudspeaker.service": "loudspeaker serve",
    "loudspeaker-agent.service": "loudspeaker-agent",
    "loudspeaker-gateway.service": "loudspeaker-gateway",
}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
)


def _directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` pairs of a unit (continuation lines joined; keys may repeat)."""
    out: dict[str, list[str]] = {}
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(re.sub(r"\s+", " ", value.strip()))
    return out


def test_every_unit_is_there() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_unit_is_hardened(name: str) -> None:
    d = _directives((UNITS / name).read_text(encoding="utf-8"))
    one = {k: v[-1] for k, v in d.items()}
    assert one["User"] not in ("", "root", "0")
    assert one["Restart"] == "always"
    assert int(one["LimitNOFILE"]) >= 4096
    assert one["ProtectSystem"] == "strict"
    assert one["NoNewPrivileges"] == "yes"
    assert one["StateDirectory"] and one["ConfigurationDirectory"]
    assert one["StateDirectoryMode"] == "0700"
    assert one["UMask"] == "0077"
    exec_start = one["ExecStart"]
    assert exec_start.startswith(INSTALLED_BIN + PROGRAM[name])
    # Secrets come from 0600 files, never the command line or the unit itself.
    assert one["EnvironmentFile"].startswith("/etc/")
    for value in (exec_start, *d.get("Environment", [])):
        assert not re.search(r"(?i)password|token|secret|://[^/\s]*:[^/\s]*@", value), value
    if name == "loudspeaker.service":
        # Fixed ports: boxes are configured with the media address.
        assert re.search(r"--http-port [1-9][0-9]*", exec_start)
    else:
        assert "--insecure-unsigned" not in exec_start  # production boxes verify commands
        assert "--broker-credentials" in exec_start and "--keys-" in exec_start


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("name", NAMES)
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    text = (UNITS / name).read_text(encoding="utf-8")
    assert INSTALLED_BIN in text
    unit = tmp_path / name
    unit.write_text(text.replace(INSTALLED_BIN, str(Path(sys.executable).parent) + "/"))
    r = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == r.stderr.strip() == "", r.stdout + r.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
def test_verify_does_catch_a_bad_unit(tmp_path: Path) -> None:
    # The check above can fail: a wrong key or a missing program is reported.
    assert SYSTEMD_ANALYZE is not None
    unit = tmp_path / "bad.service"
    unit.write_text("[Service]\nExecStart=/nonexistent/loudspeaker serve\nProtectSystem=bogus\n")
    r = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0 or r.stderr.strip()
    assert "ProtectSystem" in r.stderr or "not executable" in r.stderr
