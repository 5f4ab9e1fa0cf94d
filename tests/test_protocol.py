"""The wire contract: parsing, refusal of malformed input, documentation in step."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from firmware_bridge.exceptions import ProtocolError
from firmware_bridge.protocol import (
    MAX_PAYLOAD_BYTES,
    Ack,
    AckState,
    Kind,
    MediaRef,
    PlayCommand,
    StopCommand,
    Topic,
    decode_ack,
    decode_command,
    decode_status,
    encode,
    json_schemas,
    topic,
    utcnow,
)

SHA = "ab" * 32


def play(**kw: object) -> PlayCommand:
    t = utcnow()
    base: dict[str, object] = {
        "id": "c0ffee0000000001",
        "cluster": "lb-01",
        "broadcast": "b0000001",
        "issued_at": t,
        "expires_at": t + timedelta(minutes=10),
        "media": MediaRef(
            url="http://127.0.0.1:1/media/x.mp3", sha256=SHA, size=10, duration_s=1.5
        ),
    }
    base.update(kw)
    return PlayCommand.model_validate(base)


def test_play_command_round_trips() -> None:
    cmd = play(repeat=3, gap_s=5)
    back = decode_command(encode(cmd))
    assert back == cmd
    assert isinstance(back, PlayCommand)


def test_stop_command_is_told_apart_by_type() -> None:
    t = utcnow()
    stop = StopCommand(id="c0ffee0000000002", cluster="lb-01", issued_at=t, expires_at=t)
    assert isinstance(decode_command(encode(stop)), StopCommand)


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[]", "bad command"),
        (json.dumps({"type": "play", "v": 1}).encode(), "bad command"),
        (json.dumps({"type": "explode", "v": 1}).encode(), "bad command"),
        (b"x" * (MAX_PAYLOAD_BYTES + 1), "exceeds"),
    ],
)
def test_malformed_commands_are_refused_with_a_reason(payload: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        decode_command(payload)


def test_wrong_field_types_name_the_field() -> None:
    data = json.loads(encode(play()))
    data["repeat"] = "many"
    with pytest.raises(ProtocolError, match="repeat"):
        decode_command(json.dumps(data).encode())


def test_future_protocol_version_is_refused() -> None:
    data = json.loads(encode(play()))
    data["v"] = 2
    with pytest.raises(ProtocolError, match="v"):
        decode_command(json.dumps(data).encode())


def test_naive_times_are_refused() -> None:
    data = json.loads(encode(play()))
    data["issued_at"] = "2026-11-30T05:00:00"
    with pytest.raises(ProtocolError, match="issued_at"):
        decode_command(json.dumps(data).encode())


def test_unknown_fields_are_refused() -> None:
    data = json.loads(encode(play()))
    data["shell"] = "rm -rf /"
    with pytest.raises(ProtocolError, match="shell"):
        decode_command(json.dumps(data).encode())


def test_ack_and_status_parse() -> None:
    ack = Ack(cluster="lb-02", command="c0ffee0000000001", state=AckState.PLAYED, ts=utcnow())
    assert decode_ack(encode(ack)) == ack
    status = decode_status(b'{"v":1,"cluster":"lb-02","state":"offline","ts":null}')
    assert status.state == "offline"
    with pytest.raises(ProtocolError, match="state"):
        decode_ack(
            b'{"v":1,"cluster":"lb-02","command":"c0ffee0000000001","state":"exploded","ts":"2026-11-30T05:00:00Z"}'
        )


def test_topics() -> None:
    assert topic("luc-binh", "lb-01", Kind.CMD) == "loudspeaker/luc-binh/lb-01/cmd"
    parsed = Topic.parse("loudspeaker/luc-binh/lb-01/ack")
    assert (parsed.site, parsed.cluster, parsed.kind) == ("luc-binh", "lb-01", Kind.ACK)
    assert str(parsed) == "loudspeaker/luc-binh/lb-01/ack"
    for bad in (
        "loudspeaker/luc-binh/lb-01",
        "other/luc-binh/lb-01/ack",
        "loudspeaker/x/LB_01/ack",
        "loudspeaker/luc-binh/lb-01/boom",
    ):
        with pytest.raises(ProtocolError):
            Topic.parse(bad)


def test_every_schema_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    for name, schema in json_schemas().items():
        assert f"### {name}" in doc, f"docs/protocol.md lacks a section for {name}"
        for field in schema["properties"]:
            assert f"`{field}`" in doc, f"docs/protocol.md does not describe {name}.{field}"


def test_published_schemas_match_the_code(tmp_path: Path) -> None:
    from firmware_bridge.protocol import write_schemas

    docs = Path(__file__).resolve().parent.parent / "docs" / "schemas"
    for written in write_schemas(str(tmp_path)):
        name = Path(written).name
        assert (docs / name).read_text() == Path(written).read_text(), (
            f"docs/schemas/{name} is stale: run python -m firmware_bridge.protocol docs/schemas"
        )
