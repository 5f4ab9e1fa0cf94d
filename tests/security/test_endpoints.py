"""``serve --broker-credentials``, ``run/endpoints.json`` and what the CLI makes of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from firmware_bridge.credentials import read_credentials
from firmware_bridge.exceptions import KeyFileError
from loudspeaker.config import Settings
from loudspeaker.runtime import Endpoints, broker_endpoint
from tests.conftest import SITE_FILE


def _creds(path: Path, mode: int, **extra: str) -> Path:
    data = {
        "url": "mqtt://127.0.0.1:1884",
        "username": "_controller",
        "password": "s3cret-" + "x" * 40,
        "site": "luc-binh",
        **extra,
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(mode)
    return path


def test_the_credentials_file_gives_user_and_password_and_the_url_can_be_overridden(
    tmp_path: Path,
) -> None:
    creds = _creds(tmp_path / "_controller.json", 0o600)
    own = broker_endpoint(None, creds)
    assert own is not None
    assert (own.host, own.port, own.username) == ("127.0.0.1", 1884, "_controller")
    given = broker_endpoint("mqtt://10.0.0.5:1999", creds)
    assert given is not None
    assert (given.host, given.port, given.username, given.password) == (
        "10.0.0.5",
        1999,
        "_controller",
        own.password,
    )
    assert "s3cret" not in repr(given) and "s3cret" not in given.url
    assert broker_endpoint(None, None) is None
    plain = broker_endpoint("mqtt://h:1", None)
    assert plain is not None and plain.username is None


def test_only_the_operators_file_may_be_shared_with_their_group(tmp_path: Path) -> None:
    shared = _creds(tmp_path / "shared.json", 0o640, username="_operator")
    # The operators' _operator.json may be 0640 (their group reads it)...
    assert broker_endpoint(None, shared, group_readable=True) is not None
    # ...the controller's file (what serve reads) and a box's stay strictly private.
    with pytest.raises(KeyFileError, match="chmod 600"):
        broker_endpoint(None, shared)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_credentials(shared)
    for mode in (0o644, 0o660, 0o604):
        loose = _creds(tmp_path / f"loose-{mode:o}.json", mode)
        with pytest.raises(KeyFileError, match="chmod 640"):
            broker_endpoint(None, loose, group_readable=True)
    # On the operators' path too, 0640 is for _operator.json only: a box's file (or any
    # other account's) shared with a group is refused.
    box = _creds(tmp_path / "lb-01.json", 0o640, username="lb-01")
    with pytest.raises(KeyFileError, match=r"only _operator\.json may be 0640"):
        broker_endpoint(None, box, group_readable=True)


def test_the_endpoints_file_round_trips_and_holds_no_secret(tmp_path: Path) -> None:
    e = Endpoints(
        broker_url="mqtt://127.0.0.1:1883",
        credentials_file="/etc/loudspeaker/_controller.json",
        media="http://127.0.0.1:8080",
        metrics="http://127.0.0.1:8080/metrics",
        pid=1234,
        started_at="2026-12-02T13:00:00+00:00",
        operator_credentials_file="/etc/loudspeaker/_operator.json",
    )
    path = tmp_path / "run" / "endpoints.json"
    e.write(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == {
        "broker": {
            "url": "mqtt://127.0.0.1:1883",
            "credentials_file": "/etc/loudspeaker/_controller.json",
            "operator_credentials_file": "/etc/loudspeaker/_operator.json",
        },
        "media": "http://127.0.0.1:8080",
        "metrics": "http://127.0.0.1:8080/metrics",
        "pid": 1234,
        "started_at": "2026-12-02T13:00:00+00:00",
    }
    assert Endpoints.read(path) == e
    # A file written before the operators' account existed still reads (no operators').
    del data["broker"]["operator_credentials_file"]
    path.write_text(json.dumps(data), encoding="utf-8")
    old = Endpoints.read(path)
    assert old is not None and old.operator_credentials_file is None
    assert e.lines() == [
        "broker  mqtt://127.0.0.1:1883 (credentials /etc/loudspeaker/_controller.json)",
        "media   http://127.0.0.1:8080",
        "metrics http://127.0.0.1:8080/metrics",
    ]
    assert Endpoints.read(tmp_path / "missing.json") is None
    path.write_text("{not json", encoding="utf-8")
    assert Endpoints.read(path) is None


def test_the_environment_names_the_credentials_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOUDSPEAKER_BROKER_CREDENTIALS", str(tmp_path / "c.json"))
    assert Settings.from_env(tmp_path).broker_credentials == tmp_path / "c.json"
    monkeypatch.delenv("LOUDSPEAKER_BROKER_CREDENTIALS")
    assert Settings.from_env(tmp_path).broker_credentials is None


def test_serve_names_the_operators_file_from_the_environment_or_beside_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOUDSPEAKER_OPERATOR_CREDENTIALS", raising=False)
    ctl = _creds(tmp_path / "_controller.json", 0o600)
    beside = Settings.from_env(tmp_path, broker_credentials=ctl)
    assert beside.operator_credentials_file is None  # no _operator.json there (yet)
    op = _creds(tmp_path / "_operator.json", 0o640, username="_operator")
    assert beside.operator_credentials_file == op
    assert Settings.from_env(tmp_path).operator_credentials_file is None  # no broker login
    monkeypatch.setenv("LOUDSPEAKER_OPERATOR_CREDENTIALS", str(tmp_path / "elsewhere.json"))
    named = Settings.from_env(tmp_path, broker_credentials=ctl)
    assert named.operator_credentials_file == tmp_path / "elsewhere.json"


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        ("missing", "cannot read credentials"),
        ("loose", "chmod 600"),  # the controller's file is private; 0640 is refused
        ("malformed", "malformed"),
    ],
)
def test_serve_refuses_an_unusable_credentials_file_with_what_to_do(
    tmp_path: Path, setup: str, says: str
) -> None:
    runner = CliRunner()
    env = {"LOUDSPEAKER_HOME": str(tmp_path / "data"), "LOUDSPEAKER_BROKER_CREDENTIALS": ""}
    assert runner.invoke(app, ["site", "load", str(SITE_FILE)], env=env).exit_code == 0
    creds = tmp_path / "_controller.json"
    if setup == "loose":
        _creds(creds, 0o640)
    elif setup == "malformed":
        creds.write_text('{"url": "mqtt://h:1"}', encoding="utf-8")
        creds.chmod(0o600)
    res = runner.invoke(app, ["serve", "--broker-credentials", str(creds)], env=env)
    assert res.exit_code == 1, res.output
    assert says in res.output and "Traceback" not in res.output
    assert not (tmp_path / "data" / "run" / "endpoints.json").exists()


def _down_controller(tmp_path: Path, **files: str | None) -> dict[str, str]:
    """A data directory whose last serve left ``endpoints.json`` and is gone now."""
    data = tmp_path / "data"
    env = {
        "LOUDSPEAKER_HOME": str(data),
        "LOUDSPEAKER_BROKER_CREDENTIALS": "",
        "LOUDSPEAKER_OPERATOR_CREDENTIALS": "",
    }
    assert CliRunner().invoke(app, ["site", "load", str(SITE_FILE)], env=env).exit_code == 0
    Endpoints(
        broker_url="mqtt://127.0.0.1:1",
        credentials_file=files.get("credentials_file"),
        operator_credentials_file=files.get("operator_credentials_file"),
        media="http://127.0.0.1:1",
        metrics="http://127.0.0.1:1/metrics",
        pid=2**22 + 1,  # no such process: the controller is down
        started_at="2026-12-02T13:00:00+00:00",
    ).write(data / "run" / "endpoints.json")
    return env


def _emergency(env: dict[str, str]) -> str:
    res = CliRunner().invoke(app, ["emergency", "Thử", "--siren", "--all"], env=env)
    assert res.exit_code == 1, res.output
    assert "recorded" in res.output and "Traceback" not in res.output
    return res.output


@pytest.mark.integration
def test_the_controller_down_path_says_what_to_do_when_it_may_not_read_the_credentials(
    tmp_path: Path,
) -> None:
    env = _down_controller(
        tmp_path,
        credentials_file=str(tmp_path / "_controller.json"),
        operator_credentials_file=str(tmp_path / "gone" / "_operator.json"),
    )
    output = _emergency(env)
    assert "operators' broker credentials cannot be used" in output
    assert "LOUDSPEAKER_OPERATOR_CREDENTIALS" in output


@pytest.mark.integration
def test_the_controller_down_path_never_falls_back_to_the_controllers_account(
    tmp_path: Path,
) -> None:
    ctl = _creds(tmp_path / "_controller.json", 0o600)
    # serve logged in to a locked-down broker but named no operators' file: say what to do.
    env = _down_controller(tmp_path, credentials_file=str(ctl))
    output = _emergency({**env, "LOUDSPEAKER_BROKER_CREDENTIALS": str(ctl)})
    assert "no operators' broker credentials" in output and "broker config" in output
    # Pointed at the controller's own file: refused before it connects.
    output = _emergency({**env, "LOUDSPEAKER_OPERATOR_CREDENTIALS": str(ctl)})
    assert "controller's own account" in output and "_operator.json" in output


def test_serve_help_names_the_environment_variable() -> None:
    res = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "[env LOUDSPEAKER_BROKER_CREDENTIALS]" in res.output
