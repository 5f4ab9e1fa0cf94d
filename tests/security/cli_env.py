"""Running the real CLI in-process as a given user (token file per role)."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner, Result

from cli import app

ROLES = ("admin", "officer", "hamlet-head", "technician")


@dataclass
class CliEnv:
    """A data directory with the Lục Bình site and one user per role."""

    root: Path
    runner: CliRunner
    announcement: str = ""

    @property
    def data(self) -> Path:
        return self.root / "data"

    def token_file(self, role: str) -> Path:
        return self.root / f"{role}.token"

    def run(self, role: str | None, *args: str) -> Result:
        env = {
            "LOUDSPEAKER_HOME": str(self.data),
            "LOUDSPEAKER_TOKEN": "",
            "LOUDSPEAKER_TOKEN_FILE": str(self.token_file(role)) if role else "",
            "XDG_CONFIG_HOME": str(self.root / "config"),  # never the real ~/.config
        }
        return self.runner.invoke(app, list(args), env=env)

    def setup_users(self, site_file: Path) -> None:
        ok(self.run(None, "site", "load", str(site_file)))
        ok(
            self.run(
                None,
                "users",
                "add",
                "admin1",
                "--role",
                "admin",
                "--token-file",
                str(self.token_file("admin")),
            )
        )
        for name, role, extra in (
            ("officer1", "officer", []),
            ("head1", "hamlet-head", ["--hamlet", "ban-cau"]),
            ("tech1", "technician", []),
        ):
            ok(
                self.run(
                    "admin",
                    "users",
                    "add",
                    name,
                    "--role",
                    role,
                    *extra,
                    "--token-file",
                    str(self.token_file(role)),
                )
            )


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
