"""Helpers of the conformance-kit suite (a plain module: conftest names collide across dirs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from firmware_bridge.keys import KeyEntry, new_secret, write_key_file
from loudspeaker.conformance import CHECKS

SITE = "luc-binh"

# Decisions for issue 13 the project's agent does not follow yet: these checks fail
# against it, so their tests are strict xfails until it does.
PENDING: dict[str, str] = {}


# Checks a run with --keys-file skips by design (they are for a box without keys).
SKIPPED_WITH_KEY = {"keyless-sig"}


def every_check() -> list[object]:
    """One pytest param per check, the pending decisions marked strict xfail."""
    params: list[object] = []
    for c in CHECKS:
        marks = [pytest.mark.xfail(strict=True, reason=PENDING[c.key])] if c.key in PENDING else []
        params.append(pytest.param(c.key, marks=marks, id=c.key))
    return params


@dataclass(frozen=True)
class KitRun:
    """One run of ``loudspeaker conformance --json``."""

    exit_code: int
    report: dict[str, Any]
    output: str

    def result(self, key: str) -> dict[str, Any]:
        [found] = [c for c in self.report["checks"] if c["key"] == key]
        return found

    def outcomes(self) -> dict[str, str]:
        return {c["key"]: c["result"] for c in self.report["checks"]}

    def failed(self) -> set[str]:
        return {k for k, v in self.outcomes().items() if v == "fail"}


def issue_key(path: Path, cluster: str, site: str = SITE) -> Path:
    """Write a key file for ``cluster`` (mode 0600, as `loudspeaker keys issue` does)."""
    write_key_file(path, site, cluster, [KeyEntry("kconf1", new_secret(), "2026-12-01T00:00:00Z")])
    return path


def run_kit(tmp: Path, broker_url: str, cluster: str, *extra: str) -> KitRun:
    """Run the kit in-process through the CLI with ``--json`` and parse what it printed."""
    args = [
        "--data-dir",
        str(tmp / "kit-data"),
        "conformance",
        "--broker",
        broker_url,
        "--site",
        SITE,
        "--cluster",
        cluster,
        "--timeout",
        "20",
        "--json",
        *extra,
    ]
    out = CliRunner().invoke(app, args)
    assert out.exit_code in (0, 1), out.output
    try:
        report = json.loads(out.stdout)
    except ValueError:
        raise AssertionError(f"not JSON: {out.output}") from None
    return KitRun(out.exit_code, report, out.output)
