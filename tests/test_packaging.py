"""A receiver box installs only what the agent needs (``pip install .``).

The base dependencies in pyproject.toml are the cluster side's (firmware_bridge: the
agent, the gateway, the simulator); everything only the controller uses is in the
``controller`` extra. Checked two ways: firmware_bridge's source imports nothing outside
the standard library and the base dependencies (any import, even one inside a function),
and a Python that cannot import the controller's packages still imports every
firmware_bridge module and starts both entry points.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.helpers import scaled
from tests.test_layers import OURS, imports_in

ROOT = Path(__file__).resolve().parent.parent
AGENT_PACKAGE = "firmware_bridge"
# Our packages a box does not need (audio renders on the controller; the box plays files).
CONTROLLER_PACKAGES = tuple(name for name in OURS if name != AGENT_PACKAGE)


def distribution_names(requirements: list[str]) -> set[str]:
    """Normalised distribution names of requirement strings (PEP 503)."""
    names = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
        assert match, requirement
        names.add(re.sub(r"[-_.]+", "-", match.group(0)).lower())
    return names


def import_names(distributions: set[str]) -> set[str]:
    """Top-level import names the installed ``distributions`` provide."""
    provided = set()
    for name, dists in packages_distributions().items():
        if distribution_names(dists) & distributions:
            provided.add(name)
    return provided


def project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        table: dict[str, object] = tomllib.load(f)["project"]
    return table


def base_distributions() -> set[str]:
    return distribution_names(project()["dependencies"])  # type: ignore[arg-type]


def controller_distributions() -> set[str]:
    extras: dict[str, list[str]] = project()["optional-dependencies"]  # type: ignore[assignment]
    return distribution_names(extras["controller"])


def test_the_extras_split_the_dependencies() -> None:
    base, controller = base_distributions(), controller_distributions()
    assert {"paho-mqtt", "pyserial"} <= base
    assert {"sqlmodel", "sqlalchemy", "apscheduler", "openpyxl", "typer"} <= controller
    assert not base & controller


def test_firmware_bridge_imports_only_the_standard_library_and_base_dependencies() -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__", AGENT_PACKAGE}
    allowed |= import_names(base_distributions())
    outside = sorted(
        f"{imp.path}:{imp.line} imports {imp.imported}"
        for imp in imports_in(ROOT)
        if imp.importer.split(".", maxsplit=1)[0] == AGENT_PACKAGE
        and imp.imported.split(".", maxsplit=1)[0] not in allowed
    )
    assert not outside, "not installed on a receiver box:\n" + "\n".join(outside)
    # The check can see the dependencies it allows (an empty mapping would allow nothing).
    assert {"paho", "serial"} <= allowed


def test_the_controller_extra_covers_what_the_controller_imports() -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__", *OURS}
    allowed |= import_names(base_distributions() | controller_distributions())
    outside = sorted(
        f"{imp.path}:{imp.line} imports {imp.imported}"
        for imp in imports_in(ROOT)
        if imp.importer.split(".", maxsplit=1)[0] in CONTROLLER_PACKAGES
        and imp.imported.split(".", maxsplit=1)[0] not in allowed
    )
    assert not outside, "in no dependency of pyproject.toml:\n" + "\n".join(outside)


# Run by a child Python: refuses every blocked top-level name, then imports each module of
# the agent's package and asks both entry points for their --help.
CHILD = """
import importlib, json, pkgutil, sys

blocked = set(json.loads(sys.argv[1]))


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not installed on a receiver box", name=name)
        return None


sys.meta_path.insert(0, Refuse())
import firmware_bridge

found = pkgutil.walk_packages(firmware_bridge.__path__, "firmware_bridge.")
modules = sorted(m.name for m in found)
for name in modules:
    importlib.import_module(name)
for entry in ("firmware_bridge.cli", "firmware_bridge.gateway"):
    try:
        importlib.import_module(entry).main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0, (entry, exc.code)
print(json.dumps({"imported": modules, "loaded": sorted(sys.modules)}))
"""


@pytest.mark.integration
def test_the_agent_runs_without_the_controllers_packages() -> None:
    blocked = sorted(import_names(controller_distributions()) | set(CONTROLLER_PACKAGES))
    assert {"sqlmodel", "sqlalchemy", "apscheduler", "typer", "loudspeaker"} <= set(blocked)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(blocked)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.splitlines()[-1])
    assert {"firmware_bridge.agent", "firmware_bridge.gateway", "firmware_bridge.simulator"} <= set(
        report["imported"]
    )
    assert not {m.partition(".")[0] for m in report["loaded"]} & set(blocked)


# Run by a child Python without the controller's third-party packages: import the
# controller's command as its console script does.
CONTROLLER_CLI = """
import json, sys

blocked = set(json.loads(sys.argv[1]))


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Refuse())
from cli import main
"""


@pytest.mark.integration
def test_the_controllers_command_on_a_receiver_box_says_what_to_install() -> None:
    blocked = sorted(import_names(controller_distributions()))
    child = subprocess.run(
        [sys.executable, "-c", CONTROLLER_CLI, json.dumps(blocked)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert child.returncode == 1
    assert "Traceback" not in child.stderr
    assert "pip install '.[controller]'" in child.stderr
    assert "loudspeaker-agent" in child.stderr
