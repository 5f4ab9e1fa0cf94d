"""Secrets never reach output or logs; every secret file is created 0600."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from loudspeaker.db import make_engine
from loudspeaker.models import AuditEntry
from tests.conftest import SITE_FILE
from tests.security.cli_env import CliEnv, mode, ok


def test_no_secret_is_printed_logged_or_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    e = CliEnv(tmp_path, CliRunner())
    e.setup_users(SITE_FILE)
    outputs = [
        ok(
            e.run(
                "admin",
                "--log-level",
                "DEBUG",
                "users",
                "add",
                "head2",
                "--role",
                "hamlet-head",
                "--hamlet",
                "na-lang",
                "--token-file",
                str(tmp_path / "h2"),
            )
        ),
        ok(
            e.run(
                "admin",
                "--log-level",
                "DEBUG",
                "users",
                "reset-token",
                "head2",
                "--token-file",
                str(tmp_path / "h2b"),
            )
        ),
        ok(
            e.run(
                "admin",
                "--log-level",
                "DEBUG",
                "keys",
                "issue",
                "lb-02",
                "-o",
                str(tmp_path / "lb-02.json"),
            )
        ),
        ok(
            e.run(
                "admin",
                "--log-level",
                "DEBUG",
                "keys",
                "rotate",
                "lb-02",
                "-o",
                str(tmp_path / "lb-02.json"),
            )
        ),
        ok(e.run("admin", "--log-level", "DEBUG", "keys", "list", "--json")),
        ok(
            e.run(
                "admin",
                "--log-level",
                "DEBUG",
                "broker",
                "config",
                "-o",
                str(tmp_path / "broker"),
                "--json",
            )
        ),
        ok(e.run("admin", "--log-level", "DEBUG", "users", "list", "--json")),
        ok(e.run("admin", "--log-level", "DEBUG", "audit", "--json")),
    ]
    secrets = [
        (tmp_path / "h2").read_text().strip(),
        (tmp_path / "h2b").read_text().strip(),
        *(k["secret"] for k in json.loads((tmp_path / "lb-02.json").read_text())["keys"]),
        *(
            json.loads(p.read_text())["password"]
            for p in (tmp_path / "broker" / "credentials").glob("*.json")
        ),
        *(e.token_file(r).read_text().strip() for r in ("admin", "officer")),
    ]
    assert len(secrets) == 2 + 2 + 12 + 2  # passwords: 10 clusters, controller, operators
    engine = make_engine(f"sqlite:///{e.data / 'loudspeaker.db'}")
    with Session(engine) as s:
        audit_text = json.dumps([r.model_dump(mode="json") for r in s.exec(select(AuditEntry))])
    engine.dispose()
    seen = "\n".join(r.output for r in outputs) + caplog.text + audit_text
    for secret in secrets:
        assert len(secret) >= 32
        assert secret not in seen


def test_secret_files_are_0600(tmp_path: Path) -> None:
    e = CliEnv(tmp_path, CliRunner())
    e.setup_users(SITE_FILE)
    ok(e.run("admin", "keys", "issue", "lb-04"))
    ok(e.run("admin", "users", "add", "tech2", "--role", "technician"))
    assert mode(e.data / "keys" / "lb-04.json") == 0o600
    assert mode(e.data / "tokens" / "tech2.token") == 0o600
    for role in ("admin", "officer", "hamlet-head", "technician"):
        assert mode(e.token_file(role)) == 0o600
