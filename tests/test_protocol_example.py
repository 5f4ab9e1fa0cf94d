"""docs/protocol.md's example exchange and checklist agree with the code.

The example is what a vendor writes a box from, so every line must be exactly what the
code writes, the command's MAC must verify with the documented test key, and the acks
must follow the rules they illustrate.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from firmware_bridge.exceptions import StaleCommand
from firmware_bridge.protocol import (
    Ack,
    AckState,
    Heartbeat,
    Kind,
    PlayCommand,
    Status,
    Topic,
    check_freshness,
    decode_ack,
    decode_command,
    decode_heartbeat,
    decode_status,
    encode,
    verify_command,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
KEY = bytes(range(32))  # the test-vector key of docs/security.md
KID = "k00000001"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _exchange() -> list[tuple[str, Topic, bytes]]:
    block = re.search(r"```text\n(.*?)```", _section("13. Example exchange"), re.S)
    assert block is not None, "the example exchange is a ```text block"
    out = []
    for line in block.group(1).splitlines():
        arrow, topic_name, payload = line.split(" ", 2)
        out.append((arrow, Topic.parse(topic_name), payload.encode()))
    return out


def test_every_line_of_the_example_is_exactly_what_the_code_writes() -> None:
    decoders = {
        Kind.CMD: decode_command,
        Kind.ACK: decode_ack,
        Kind.STATUS: decode_status,
        Kind.HEALTH: decode_heartbeat,
    }
    lines = _exchange()
    assert len(lines) >= 6
    for arrow, topic, payload in lines:
        assert arrow == ("→" if topic.kind is Kind.CMD else "←"), (arrow, topic)
        message: BaseModel = decoders[topic.kind](payload)
        assert encode(message) == payload, f"{topic} line differs from encode()"
        assert getattr(message, "cluster", None) == topic.cluster


def test_the_example_command_is_signed_with_the_test_key_and_fresh_when_sent() -> None:
    (cmd,) = [decode_command(p) for _, t, p in _exchange() if t.kind is Kind.CMD]
    assert isinstance(cmd, PlayCommand)
    assert cmd.sig is not None and cmd.sig.kid == KID
    verify_command(cmd, {KID: KEY}, cmd.issued_at)
    # And the expiry refusal it would get an hour later uses the one documented wording.
    late = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    with pytest.raises(StaleCommand) as refused:
        check_freshness(cmd, late, expires_as_sent="2026-11-30T05:10:00Z")
    assert f"refused: {refused.value}" == "refused: expired at 2026-11-30T05:10:00Z"
    assert "refused: expired at <expires_at as sent>" in DOC.read_text(encoding="utf-8")


def test_the_example_acks_follow_the_rules() -> None:
    lines = _exchange()
    (cmd,) = [decode_command(p) for _, t, p in lines if t.kind is Kind.CMD]
    assert isinstance(cmd, PlayCommand)
    acks: list[Ack] = [decode_ack(p) for _, t, p in lines if t.kind is Kind.ACK]
    assert [a.state for a in acks] == [
        AckState.RECEIVED,
        AckState.STAGED,
        AckState.PLAYING,
        AckState.PLAYED,
    ]
    assert all(a.command == cmd.id and a.broadcast == cmd.broadcast for a in acks)
    assert [a.ts for a in acks] == sorted(a.ts for a in acks)
    # The retained online status comes first; heartbeats say what plays.
    first = decode_status(lines[0][2])
    assert isinstance(first, Status) and first.state == "online"
    beats: list[Heartbeat] = [decode_heartbeat(p) for _, t, p in lines if t.kind is Kind.HEALTH]
    assert [b.playing for b in beats] == [cmd.broadcast, None]
    assert [b.seq for b in beats] == sorted(b.seq for b in beats)


def test_the_checklist_is_numbered_and_every_item_names_its_section() -> None:
    items = re.findall(
        r"^(\d+)\. (.*?)(?=^\d+\. |\Z)", _section("12. Minimum conforming box"), re.S | re.M
    )
    assert [int(n) for n, _ in items] == list(range(1, len(items) + 1))
    assert len(items) >= 25
    for n, text in items:
        assert re.search(r"\(§\d+", text), f"checklist item {n} names no section"
