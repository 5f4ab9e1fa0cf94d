"""Signed commands: the canonical form, the published test vector, every refusal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_bridge.exceptions import BadSignature, StaleCommand, UnknownKey, UnsignedCommand
from firmware_bridge.protocol import (
    MediaRef,
    PlayCommand,
    StopCommand,
    canonical_json,
    decode_command,
    encode,
    sign_command,
    signing_input,
    verify_command,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
KEY = bytes(range(32))  # 000102...1f, the documented test key
NOW = datetime(2026, 11, 30, 5, 0, 0, tzinfo=UTC)


def vector_command() -> PlayCommand:
    return PlayCommand(
        id="c0ffee0000000001",
        cluster="lb-01",
        broadcast="b0000001",
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=10),
        title="Thông báo lũ",
        media=MediaRef(
            url="http://10.0.0.1:8080/media/ab.mp3", sha256="ab" * 32, size=48000, duration_s=12.5
        ),
        repeat=2,
        gap_s=5,
    )


def test_published_test_vector_matches_docs() -> None:
    signed = sign_command(vector_command(), KEY, "k00000001")
    doc = DOC.read_text(encoding="utf-8")
    assert signing_input(vector_command(), "k00000001").decode() in doc
    assert signed.sig is not None
    assert signed.sig.mac in doc, "docs/security.md must show the test vector's MAC"


def test_canonical_json_follows_rfc8785_numbers_and_order() -> None:
    assert canonical_json({"b": 1, "a": [1.0, 0.5, 1e-7, 1e21, None, True]}) == (
        b'{"a":[1,0.5,1e-7,1e+21,null,true],"b":1}'
    )
    assert canonical_json({"t": "Thôn\n"}) == '{"t":"Thôn\\n"}'.encode()


def test_signed_command_survives_the_wire_and_verifies() -> None:
    signed = sign_command(vector_command(), KEY, "k1")
    back = decode_command(encode(signed))
    verify_command(back, {"k1": KEY}, NOW + timedelta(seconds=1))
    stop = sign_command(
        StopCommand(
            id="c0ffee0000000002",
            cluster="lb-01",
            issued_at=NOW,
            expires_at=NOW + timedelta(minutes=1),
        ),
        KEY,
        "k1",
    )
    verify_command(decode_command(encode(stop)), {"k1": KEY}, NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", "Giả mạo"),
        ("cluster", "lb-02"),
        ("id", "c0ffee0000000009"),
        ("issued_at", "2026-11-30T05:00:01Z"),
        ("expires_at", "2026-11-30T06:00:00Z"),
        ("repeat", 10),
        ("media", {"url": "http://evil/x.mp3", "sha256": "cd" * 32, "size": 1, "duration_s": 1}),
    ],
)
def test_any_altered_field_breaks_the_signature(field: str, value: object) -> None:
    data = json.loads(encode(sign_command(vector_command(), KEY, "k1")))
    data[field] = value
    with pytest.raises(BadSignature, match="does not match"):
        verify_command(decode_command(json.dumps(data).encode()), {"k1": KEY}, NOW)


def test_unsigned_unknown_key_and_wrong_key_are_refused() -> None:
    with pytest.raises(UnsignedCommand):
        verify_command(vector_command(), {"k1": KEY}, NOW)
    with pytest.raises(UnknownKey, match="k2"):
        verify_command(sign_command(vector_command(), KEY, "k2"), {"k1": KEY}, NOW)
    with pytest.raises(BadSignature):
        verify_command(sign_command(vector_command(), b"x" * 32, "k1"), {"k1": KEY}, NOW)


def test_stale_commands_are_refused() -> None:
    signed = sign_command(vector_command(), KEY, "k1")
    with pytest.raises(StaleCommand, match="expired"):
        verify_command(signed, {"k1": KEY}, NOW + timedelta(minutes=10))
    with pytest.raises(StaleCommand, match="future"):
        verify_command(signed, {"k1": KEY}, NOW - timedelta(minutes=5))
    # Within the documented 120 s skew a box whose clock lags still accepts it.
    verify_command(signed, {"k1": KEY}, NOW - timedelta(seconds=100))
    long_lived = sign_command(
        vector_command().model_copy(update={"expires_at": NOW + timedelta(hours=49)}), KEY, "k1"
    )
    with pytest.raises(StaleCommand, match="lifetime"):
        verify_command(long_lived, {"k1": KEY}, NOW)


def test_a_day_ahead_pre_staged_item_is_not_too_long_lived() -> None:
    # The schedule horizon (24 h) plus the grace (15 min) must pass the lifetime check.
    long = vector_command().model_copy(update={"expires_at": NOW + timedelta(hours=24, minutes=15)})
    verify_command(sign_command(long, KEY, "k1"), {"k1": KEY}, NOW + timedelta(seconds=1))
