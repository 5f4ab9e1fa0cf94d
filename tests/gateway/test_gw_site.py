"""The gateway reads its clusters from the site file; the controller reads the same file."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gw_support import MIXED_SITE, PLAIN_SITE

from firmware_bridge.exceptions import GatewayError
from firmware_bridge.gateway import load_gateway_site, parse_gateway_site
from loudspeaker.alarms import AlarmKind, Observation, evaluate
from loudspeaker.site import HealthConfig, load_site_file


def test_the_mixed_site_has_eight_ip_and_two_serial_clusters() -> None:
    site = load_site_file(MIXED_SITE)
    kinds = {c.id: c.transport for c in site.clusters}
    assert sum(t == "mqtt" for t in kinds.values()) == 8
    serial = [c for c in site.clusters if c.transport == "serial"]
    assert [(c.id, c.gateway, c.address) for c in serial] == [
        ("lb-09", "hall", 1),
        ("lb-10", "hall", 2),
    ]
    # Same commune, same hamlets as the all-IP site.
    assert [h.id for h in site.hamlets] == [h.id for h in load_site_file(PLAIN_SITE).hamlets]


def test_the_gateway_takes_only_its_own_serial_clusters() -> None:
    gw = load_gateway_site(MIXED_SITE, "hall")
    assert gw.site == "luc-binh"
    assert [(c.id, c.address) for c in gw.clusters] == [("lb-09", 1), ("lb-10", 2)]
    assert len(gw.ports) == 1 and gw.ports[0].startswith("/dev/serial/by-id/")
    assert load_gateway_site(MIXED_SITE, "hall", port="/dev/ttyUSB7").ports == ["/dev/ttyUSB7"]


def _site(*clusters: str) -> dict[str, object]:
    text = '[site]\nid = "x"\nname = "X"\n' + "".join(f"[[clusters]]\n{c}\n" for c in clusters)
    return tomllib.loads(text)


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        (['id = "a"\ntransport = "serial"\ngateway = "hall"\naddress = 1'], "no serial port"),
        (
            ['id = "a"\ntransport = "serial"\ngateway = "hall"\naddress = 300\nport = "/p"'],
            "not a bus address",
        ),
        (
            [
                'id = "a"\ntransport = "serial"\ngateway = "hall"\naddress = 4\nport = "/p"',
                'id = "b"\ntransport = "serial"\ngateway = "hall"\naddress = 4\nport = "/p"',
            ],
            "already a's",
        ),
        (
            ['id = "a"\ntransport = "serial"\ngateway = "school"\naddress = 1\nport = "/p"'],
            "gateways in the file: school",
        ),
        (['id = "a"\ntransport = "mqtt"'], "no serial clusters"),
    ],
)
def test_site_errors_say_what_to_fix(clusters: list[str], message: str) -> None:
    with pytest.raises(GatewayError, match=message):
        parse_gateway_site(_site(*clusters), "hall")


def test_unreadable_site_file(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match="cannot read"):
        load_gateway_site(tmp_path / "missing.toml", "hall")
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\n", encoding="utf-8")
    with pytest.raises(GatewayError, match="not valid TOML"):
        load_gateway_site(bad, "hall")


def test_control_link_rule() -> None:
    t = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
    base = {"now": t, "watching_since": t - timedelta(minutes=1)}

    def finding(**kw: object) -> tuple[bool | None, str]:
        obs = Observation(**base, **kw)  # type: ignore[arg-type]
        [f] = [f for f in evaluate(obs, HealthConfig(), set()) if f.kind is AlarmKind.CONTROL_LINK]
        return f.active, f.message

    assert finding(control_link="down", control_link_detail="port gone")[0] is True
    assert finding(control_link="down", control_link_detail="port gone")[1] == "port gone"
    assert finding(control_link="ok")[0] is False
    assert finding()[0] is False  # a box without an MCU link has no such fault
