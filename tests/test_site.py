"""The site file: the shipped example, and errors that name field and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from loudspeaker.exceptions import SiteError
from loudspeaker.site import load_site_file, parse_site
from tests.conftest import SITE_FILE

GOOD = SITE_FILE.read_text(encoding="utf-8")


def test_shipped_site_has_eight_hamlets_and_ten_clusters() -> None:
    site = load_site_file(SITE_FILE)
    assert site.site.id == "luc-binh"
    assert site.site.timezone == "Asia/Ho_Chi_Minh"
    assert len(site.hamlets) == 8
    assert len(site.clusters) == 10
    assert {c.hamlet for c in site.clusters} == {h.id for h in site.hamlets}


def _line_of(text: str, needle: str, nth: int = 1) -> int:
    count = 0
    for n, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            count += 1
            if count == nth:
                return n
    raise AssertionError(needle)


def test_unknown_hamlet_names_field_and_line() -> None:
    text = GOOD.replace('hamlet = "na-pai"', 'hamlet = "na-paj"')
    line = _line_of(text, 'hamlet = "na-paj"')
    with pytest.raises(
        SiteError, match=rf"clusters\[7\]\.hamlet \(line {line}\): unknown hamlet 'na-paj'"
    ):
        parse_site(text)


def test_duplicate_cluster_id_names_line() -> None:
    text = GOOD.replace('id = "lb-05"', 'id = "lb-04"')
    line = _line_of(text, 'id = "lb-04"', nth=2)
    with pytest.raises(
        SiteError, match=rf"clusters\[4\]\.id \(line {line}\): duplicate cluster id"
    ):
        parse_site(text)


def test_bad_transport_names_field_and_line() -> None:
    text = GOOD.replace('transport = "mqtt"', 'transport = "pigeon"', 1)
    line = _line_of(text, 'transport = "pigeon"')
    with pytest.raises(SiteError, match=rf"clusters\[0\]\.transport \(line {line}\)"):
        parse_site(text)


def test_bad_toml_names_line() -> None:
    text = GOOD.replace('name = "Thôn Nà Lằng"', 'name = "Thôn Nà Lằng')
    line = _line_of(text, 'name = "Thôn Nà Lằng')
    with pytest.raises(SiteError, match=rf"not valid TOML: .*line {line}"):
        parse_site(text)


def test_serial_cluster_needs_gateway_and_address() -> None:
    text = GOOD.replace('transport = "mqtt"', 'transport = "serial"', 1)
    with pytest.raises(SiteError, match="gateway"):
        parse_site(text)
    ok = GOOD.replace(
        'transport = "mqtt"', 'transport = "serial"\ngateway = "hall"\naddress = 3', 1
    )
    assert parse_site(ok).clusters[0].address == 3


def test_bad_timezone_and_bad_id() -> None:
    with pytest.raises(SiteError, match="time zone"):
        parse_site(GOOD.replace('timezone = "Asia/Ho_Chi_Minh"', 'timezone = "Mars/Olympus"'))
    with pytest.raises(SiteError, match=r"hamlets\[0\]\.id"):
        parse_site(GOOD.replace('id = "ban-cau"', 'id = "Bản Cầu"'))


def test_cli_load_and_show(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    res = runner.invoke(app, [*data, "site", "load", str(SITE_FILE)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*data, "site", "show", "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert len(shown["clusters"]) == 10
    assert shown["site"]["name"] == "Xã Lục Bình"


def test_cli_refuses_bad_file_and_keeps_stored_site(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    assert runner.invoke(app, [*data, "site", "load", str(SITE_FILE)]).exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('hamlet = "coc-xa"', 'hamlet = "nowhere"', 1), encoding="utf-8")
    res = runner.invoke(app, [*data, "site", "load", str(bad)])
    assert res.exit_code == 1
    assert "unknown hamlet 'nowhere'" in res.stderr
    assert "line" in res.stderr
    res = runner.invoke(app, [*data, "site", "show", "--json"])
    assert len(json.loads(res.stdout)["clusters"]) == 10


def test_show_without_site_says_what_to_do(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["--data-dir", str(tmp_path), "site", "show"])
    assert res.exit_code == 1
    assert "site load" in res.stderr


def test_an_error_message_is_printed_as_written(tmp_path: Path) -> None:
    """Square brackets in a message (usage lines) are text, not Rich markup to swallow."""
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    assert runner.invoke(app, [*data, "site", "load", str(SITE_FILE)]).exit_code == 0
    res = runner.invoke(app, [*data, "clusters", "bogus"])
    assert res.exit_code == 1
    assert "usage: loudspeaker clusters [show ID] [--json]" in res.output


def test_a_negative_wait_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    assert runner.invoke(app, [*data, "site", "load", str(SITE_FILE)]).exit_code == 0
    res = runner.invoke(
        app, [*data, "broadcast", "Họp thôn", "--to", "all", "--wait", "--timeout", "-3"]
    )
    assert res.exit_code == 2 and "--timeout" in res.output
    res = runner.invoke(app, [*data, "broadcast", "list", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == []
