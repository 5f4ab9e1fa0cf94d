"""The generated mosquitto files by themselves: layout, ACL, and `broker config` re-runs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli import app
from firmware_bridge.protocol import MAX_PAYLOAD_BYTES, Kind
from loudspeaker.brokerconf import (
    GLOBAL_OPTIONS,
    LISTENER_OPTIONS,
    TLS_OPTIONS,
    Listener,
    TlsFiles,
    render_acl,
    render_conf,
)
from tests.conftest import SITE_FILE
from tests.security.cli_env import CliEnv, mode, ok


def blocks(conf: str) -> tuple[list[str], list[list[str]]]:
    """Option names before the first ``listener`` line, and each listener's block."""
    names = [ln.split()[0] for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]
    first = names.index("listener")
    listeners: list[list[str]] = []
    for name in names[first:]:
        if name == "listener":
            listeners.append([])
        listeners[-1].append(name)
    return names[:first], listeners


def option(conf: str, name: str) -> list[str]:
    return [ln.split(" ", 1)[1] for ln in conf.splitlines() if ln.startswith(f"{name} ")]


def test_only_global_options_before_the_first_listener(tmp_path: Path) -> None:
    tls = TlsFiles(tmp_path / "s.crt", tmp_path / "s.key", tmp_path / "ca.crt")
    conf = render_conf(
        site="luc-binh",
        passwd=tmp_path / "passwd",
        acl=tmp_path / "acl",
        persist=tmp_path / "persist",
        listeners=[
            Listener(1884, "127.0.0.1", "controller", 70),
            Listener(8884, "0.0.0.0", "clusters", 70, tls),
        ],
        run_as="mosquitto",
    )
    head, listeners = blocks(conf)
    assert set(head) <= GLOBAL_OPTIONS, set(head) - GLOBAL_OPTIONS
    assert head[0] == "per_listener_settings"
    assert option(conf, "per_listener_settings") == ["false"]
    assert option(conf, "allow_anonymous") == ["false"]
    assert option(conf, "message_size_limit") == [str(MAX_PAYLOAD_BYTES)]
    assert int(option(conf, "max_packet_size")[0]) > MAX_PAYLOAD_BYTES
    assert option(conf, "listener") == ["1884 127.0.0.1", "8884 0.0.0.0"]
    for block in listeners:
        assert set(LISTENER_OPTIONS) <= set(block), block
    assert set(TLS_OPTIONS).isdisjoint(listeners[0]) and set(TLS_OPTIONS) <= set(listeners[1])
    assert option(conf, "use_username_as_clientid") == ["true", "true"]
    assert option(conf, "protocol") == ["mqtt", "mqtt"]


def test_acl_grants_each_box_its_own_topics_and_the_operators_each_clusters() -> None:
    acl = render_acl("luc-binh", ["lb-01", "lb-02"])
    lines = [ln for ln in acl.splitlines() if ln and not ln.startswith("#")]
    assert lines == [
        "user _controller",
        "topic readwrite loudspeaker/luc-binh/#",
        "user _operator",
        "topic write loudspeaker/luc-binh/lb-01/cmd",
        "topic read loudspeaker/luc-binh/lb-01/ack",
        "topic read loudspeaker/luc-binh/lb-01/status",
        "topic read loudspeaker/luc-binh/lb-01/health",
        "topic read loudspeaker/luc-binh/lb-01/result",
        "topic write loudspeaker/luc-binh/lb-02/cmd",
        "topic read loudspeaker/luc-binh/lb-02/ack",
        "topic read loudspeaker/luc-binh/lb-02/status",
        "topic read loudspeaker/luc-binh/lb-02/health",
        "topic read loudspeaker/luc-binh/lb-02/result",
        "pattern read loudspeaker/luc-binh/%u/cmd",
        "pattern write loudspeaker/luc-binh/%u/ack",
        "pattern write loudspeaker/luc-binh/%u/status",
        "pattern write loudspeaker/luc-binh/%u/health",
        "pattern write loudspeaker/luc-binh/%u/result",
    ]
    # A kind the protocol adds is granted without touching this module: to the boxes, and
    # to the operators the other way round.
    for kind in Kind:
        assert f"/%u/{kind.value}" in acl
        assert f"/lb-02/{kind.value}" in acl


@pytest.fixture
def env(tmp_path: Path) -> Iterator[CliEnv]:
    e = CliEnv(tmp_path, CliRunner())
    e.setup_users(SITE_FILE)
    yield e


def config(e: CliEnv, out: Path, *extra: str) -> Result:
    return e.run("admin", "broker", "config", "-o", str(out), "--host", "localhost", *extra)


def box_credentials(out: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((out / "credentials" / "lb-01.json").read_text())
    return data


def test_missing_tls_file_is_a_clear_error_and_writes_nothing(env: CliEnv, tmp_path: Path) -> None:
    out = tmp_path / "new" / "conf"
    result = config(
        env, out, "--tls-cert", "/nope.crt", "--tls-key", "/nope.key", "--tls-ca", "/nope.crt"
    )
    assert result.exit_code == 1, result.output
    assert "--tls-cert /nope.crt: no such file" in result.output
    assert "Traceback" not in result.output
    assert not out.parent.exists()


def test_a_file_that_is_not_a_certificate_is_refused(env: CliEnv, tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("hello\n")
    out = tmp_path / "conf"
    result = config(
        env, out, "--tls-cert", str(junk), "--tls-key", str(junk), "--tls-ca", str(junk)
    )
    assert result.exit_code == 1
    assert f"--tls-cert {junk} is not a PEM certificate" in result.output
    assert not out.exists()


def test_a_failure_half_way_leaves_no_partial_directory(env: CliEnv, tmp_path: Path) -> None:
    out = tmp_path / "new" / "conf"
    no_tools = tmp_path / "no-tools"  # openssl cannot be found once the directory exists
    no_tools.mkdir()
    result = env.runner.invoke(
        app,
        ["broker", "config", "-o", str(out), "--tls-self-signed"],
        env={
            "LOUDSPEAKER_HOME": str(env.data),
            "LOUDSPEAKER_TOKEN": "",
            "LOUDSPEAKER_TOKEN_FILE": str(env.token_file("admin")),
            "XDG_CONFIG_HOME": str(env.root / "config"),
            "PATH": str(no_tools),
        },
    )
    assert result.exit_code == 1, result.output
    assert "openssl is not installed" in result.output
    assert not out.parent.exists()  # neither DIR nor the parent this run made for it


@pytest.mark.integration  # openssl makes the CA and certificates
def test_rerun_keeps_tls_and_the_ca_until_told_otherwise(env: CliEnv, tmp_path: Path) -> None:
    out = tmp_path / "conf"
    ok(config(env, out, "--tls-self-signed", "--tls-port", "8884"))
    first = box_credentials(out)
    ca = (out / "tls" / "ca.crt").read_bytes()
    assert str(first["url"]).startswith("mqtts://") and first["tls_ca"] == "ca.crt"

    # Adding a cluster later, without repeating the TLS flags: TLS and passwords stay.
    result = ok(config(env, out, "--tls-port", "8884"))
    assert "Kept the TLS listener" in result.output and "--no-tls" in result.output
    assert "NAME.json and ca.crt" in " ".join(result.output.split())
    assert box_credentials(out) == first
    conf = (out / "mosquitto.conf").read_text()
    assert len(option(conf, "certfile")) == 1 and (out / "credentials" / "ca.crt").is_file()

    # --tls-self-signed again reuses the private CA: installed boxes keep trusting it.
    ok(config(env, out, "--tls-self-signed", "--tls-port", "8884"))
    assert (out / "tls" / "ca.crt").read_bytes() == ca
    assert box_credentials(out) == first

    # Dropping TLS takes an explicit flag.
    ok(config(env, out, "--no-tls"))
    plain = box_credentials(out)
    assert str(plain["url"]).startswith("mqtt://") and "tls_ca" not in plain
    assert plain["password"] == first["password"]
    conf = (out / "mosquitto.conf").read_text()
    assert option(conf, "certfile") == [] and len(option(conf, "listener")) == 1
    # ... and stays dropped on the next plain run, although tls/ is still there.
    ok(config(env, out))
    assert box_credentials(out) == plain and (out / "tls" / "ca.key").is_file()


@pytest.mark.integration  # openssl compares the key with the certificate
def test_given_certificate_files_are_checked_and_copied_in(env: CliEnv, tmp_path: Path) -> None:
    made = tmp_path / "made"
    ok(config(env, made, "--tls-self-signed"))
    other = tmp_path / "other"
    ok(config(env, other, "--tls-self-signed"))
    cert, ca = made / "tls" / "server.crt", made / "tls" / "ca.crt"

    out = tmp_path / "conf"
    wrong_key = other / "tls" / "server.key"
    result = config(
        env, out, "--tls-cert", str(cert), "--tls-key", str(wrong_key), "--tls-ca", str(ca)
    )
    assert result.exit_code == 1
    assert "is not the private key of --tls-cert" in result.output
    assert not out.exists()

    key = made / "tls" / "server.key"
    ok(config(env, out, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)))
    assert (out / "tls" / "server.crt").read_bytes() == cert.read_bytes()
    assert (out / "credentials" / "ca.crt").read_bytes() == ca.read_bytes()
    conf = (out / "mosquitto.conf").read_text()
    assert option(conf, "certfile") == [str((out / "tls" / "server.crt").resolve())]


def test_same_port_for_both_listeners_is_refused(env: CliEnv, tmp_path: Path) -> None:
    out = tmp_path / "conf"
    result = config(env, out, "--tls-self-signed", "--port", "8883", "--tls-port", "8883")
    assert result.exit_code == 1
    assert "--port and --tls-port are both 8883" in result.output
    assert not out.exists()


@pytest.mark.integration
def test_the_operators_account_is_written_beside_the_controllers(
    env: CliEnv, tmp_path: Path
) -> None:
    out = tmp_path / "conf"
    ok(config(env, out, "--tls-self-signed", "--tls-port", "8884"))
    creds = out / "credentials"
    op = json.loads((creds / "_operator.json").read_text())
    assert op["username"] == "_operator" and op["site"] == "luc-binh"
    # The clusters' address, over TLS: the kit may run on a vendor's laptop.
    assert op["url"] == "mqtts://localhost:8884" and op["tls_ca"] == "ca.crt"
    ctl = json.loads((creds / "_controller.json").read_text())
    assert op["password"] != ctl["password"] and len(op["password"]) >= 32
    users = [ln.split(":")[0] for ln in (out / "passwd").read_text().splitlines()]
    assert users[:2] == ["_controller", "_operator"] and "lb-01" in users
    # No operators' group: private like every other credentials file.
    assert mode(creds / "_operator.json") == 0o600 and mode(creds) == 0o700
    # A re-run keeps the operators' password, as every other.
    ok(config(env, out))
    assert json.loads((creds / "_operator.json").read_text())["password"] == op["password"]


def test_with_an_operators_group_only_the_operators_file_is_shared(
    env: CliEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gid = os.getgid()  # a group this test may give files to
    monkeypatch.setenv("LOUDSPEAKER_GROUP", str(gid))
    out = tmp_path / "conf"
    ok(config(env, out, "--no-tls"))
    creds = out / "credentials"
    assert mode(creds / "_operator.json") == 0o640
    assert (creds / "_operator.json").stat().st_gid == gid
    assert mode(creds) == 0o750 and creds.stat().st_gid == gid
    for private in ("_controller.json", "lb-01.json", "lb-10.json"):
        assert mode(creds / private) == 0o600, private
    assert mode(out / "passwd") == 0o600


def test_a_rerun_without_the_group_keeps_the_operators_file_shared(
    env: CliEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gid = os.getgid()  # a group this test may give files to
    monkeypatch.setenv("LOUDSPEAKER_GROUP", str(gid))
    out = tmp_path / "conf"
    ok(config(env, out, "--no-tls"))
    creds = out / "credentials"
    # An admin re-runs it later without LOUDSPEAKER_GROUP in the environment.
    monkeypatch.delenv("LOUDSPEAKER_GROUP")
    result = ok(config(env, out, "--no-tls"))
    assert mode(creds / "_operator.json") == 0o640
    assert (creds / "_operator.json").stat().st_gid == gid
    assert mode(creds) == 0o750 and creds.stat().st_gid == gid
    assert "kept from the earlier run" in " ".join(result.output.split())
    for private in ("_controller.json", "lb-01.json"):
        assert mode(creds / private) == 0o600, private
