"""Pure unit tests of the frame format: COBS, CRC, decoding, stream splitting, doc vectors."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from firmware_bridge.exceptions import FrameError
from firmware_bridge.framing import (
    MAX_ENCODED,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_frame,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "serial-protocol.md"


def reference_crc16_ccitt_false(data: bytes) -> int:
    """Bit-by-bit CRC-16/CCITT-FALSE, written from the definition, to check crc_hqx use."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


# Examples from the COBS paper / Wikipedia, without the trailing delimiter.
COBS_VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize(("plain", "encoded"), COBS_VECTORS)
def test_cobs_matches_published_examples(plain: bytes, encoded: bytes) -> None:
    assert cobs_encode(plain) == encoded
    assert cobs_decode(encoded) == plain


def test_cobs_round_trip_random() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        size = rng.choice([0, 1, 2, 253, 254, 255, 508, 509, rng.randrange(0, 700)])
        # Bias towards zeros and 0xff so block boundaries get exercised.
        plain = bytes(rng.choice([0, 0xFF, rng.randrange(256)]) for _ in range(size))
        encoded = cobs_encode(plain)
        assert 0 not in encoded
        assert len(encoded) <= len(plain) + len(plain) // 254 + 1
        assert cobs_decode(encoded) == plain


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        (b"\x03\x11\x00", "zero byte"),
        (b"\x05\x11\x22", "past the end"),
        (b"\x00", "zero byte"),
    ],
)
def test_cobs_rejects_malformed(encoded: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        cobs_decode(encoded)


def test_crc_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1
    rng = random.Random(3)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 250)))
        assert crc16(data) == reference_crc16_ccitt_false(data)


def test_frame_round_trip() -> None:
    rng = random.Random(11)
    for _ in range(500):
        frame = Frame(
            rng.choice(list(FrameType)),
            rng.randrange(256),
            rng.randrange(256),
            rng.randrange(256),
            bytes(rng.randrange(256) for _ in range(rng.randrange(MAX_PAYLOAD + 1))),
        )
        wire = frame.encode()
        assert wire.endswith(b"\x00")
        assert 0 not in wire[:-1]
        assert len(wire) - 1 <= MAX_ENCODED
        assert decode_frame(wire[:-1]) == frame


def test_frame_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="seq"):
        Frame(FrameType.REQUEST, 1, 256, 1)
    with pytest.raises(ValueError, match="payload"):
        Frame(FrameType.REQUEST, 1, 0, 1, bytes(MAX_PAYLOAD + 1))


GOOD = Frame(FrameType.REQUEST, 0x01, 0x2A, 0x13, b"\x32")


def test_bad_crc_rejected() -> None:
    raw = bytearray(GOOD.to_bytes())
    raw[-1] ^= 0x01
    with pytest.raises(FrameError, match="bad CRC"):
        decode_frame(cobs_encode(bytes(raw)))


def test_every_single_byte_corruption_rejected() -> None:
    encoded = GOOD.encode()[:-1]
    for index in range(len(encoded)):
        for flip in (0x01, 0x80, 0xFF, 0x5A):
            damaged = bytearray(encoded)
            damaged[index] ^= flip
            if 0 in damaged:
                continue  # becomes a delimiter: covered by the stream tests
            with pytest.raises(FrameError):
                decode_frame(bytes(damaged))


def test_truncated_rejected() -> None:
    raw = GOOD.to_bytes()
    with pytest.raises(FrameError, match="truncated"):
        decode_frame(cobs_encode(raw[:7]))
    # Cut inside the payload: the length byte no longer matches (and the CRC is off).
    with pytest.raises(FrameError):
        decode_frame(cobs_encode(raw[:-1]))
    with pytest.raises(FrameError, match="past the end"):
        decode_frame(GOOD.encode()[:-3])


def test_length_mismatch_rejected() -> None:
    body = bytes((PROTOCOL_VERSION, 1, FrameType.REQUEST, 0, 0x13, 2)) + b"\x32"
    with pytest.raises(FrameError, match="length byte says 2"):
        decode_frame(cobs_encode(with_crc(body)))


def test_wrong_version_rejected() -> None:
    body = bytes((2, 1, FrameType.REQUEST, 0, 0x13, 1)) + b"\x32"
    with pytest.raises(FrameError, match="unsupported protocol version 2"):
        decode_frame(cobs_encode(with_crc(body)))


def test_unknown_type_rejected() -> None:
    body = bytes((PROTOCOL_VERSION, 1, 0x09, 0, 0x13, 0))
    with pytest.raises(FrameError, match="unknown frame type 0x09"):
        decode_frame(cobs_encode(with_crc(body)))


def test_oversize_rejected() -> None:
    body = bytes((PROTOCOL_VERSION, 1, FrameType.REQUEST, 0, 0x13, 0xFF)) + bytes(0xFF)
    encoded = cobs_encode(with_crc(body))
    with pytest.raises(FrameError, match="oversize"):
        decode_frame(encoded)


def test_frame_error_carries_bytes() -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(b"\x02\x01")
    assert caught.value.data == b"\x02\x01"


def test_decoder_handles_byte_by_byte_and_batched_input() -> None:
    frames = [Frame(FrameType.RESPONSE, 1, seq, 0x20, bytes([seq, 0, 0])) for seq in range(5)]
    stream = b"".join(b"\x00" + frame.encode() for frame in frames)
    one_by_one: list[Frame | FrameError] = []
    decoder = FrameDecoder()
    for byte in stream:
        one_by_one += decoder.feed(bytes([byte]))
    assert one_by_one == frames
    assert FrameDecoder().feed(stream) == frames


def test_decoder_resyncs_after_garbage_and_oversize() -> None:
    decoder = FrameDecoder()
    results = decoder.feed(b"\x07\x07\x07\x00" + GOOD.encode())
    assert isinstance(results[0], FrameError)
    assert results[1:] == [GOOD]

    results = decoder.feed(b"\x01" * (MAX_ENCODED + 10))
    assert len(results) == 1
    assert isinstance(results[0], FrameError)
    assert "oversize" in str(results[0])
    # Still discarding: more junk, then the delimiter, then a good frame.
    assert decoder.feed(b"\x01" * 500) == []
    assert decoder.feed(b"\x00" + GOOD.encode()) == [GOOD]


def test_corrupted_delimiter_costs_one_frame_with_leading_zero() -> None:
    # The first frame's 0x00 delimiter was hit by noise and arrives as 0x5a.
    first = Frame(FrameType.RESPONSE, 1, 1, 0x12, b"\x10").encode()[:-1] + b"\x5a"
    second = Frame(FrameType.RESPONSE, 1, 2, 0x12, b"\x11")
    results = FrameDecoder().feed(first + b"\x00" + second.encode())
    assert isinstance(results[0], FrameError)
    assert results[1:] == [second]
    # Without the leading delimiter the two frames merge and both are lost.
    merged = FrameDecoder().feed(first + second.encode())
    assert len(merged) == 1
    assert isinstance(merged[0], FrameError)


def _doc_vectors() -> list[tuple[str, Frame, bytes, bytes]]:
    text = DOC.read_text(encoding="utf-8")
    pattern = re.compile(
        r"vector: (?P<name>\S+)\n"
        r"frame:\s+(?P<type>\w+) address=0x(?P<address>\w\w) seq=0x(?P<seq>\w\w) "
        r"command=0x(?P<command>\w\w) payload=(?P<payload>[-0-9a-f ]+)\n"
        r"raw:\s+(?P<raw>[0-9a-f ]+)\n"
        r"wire:\s+(?P<wire>[0-9a-f ]+)\n"
    )
    vectors = []
    for match in pattern.finditer(text):
        payload = b"" if match["payload"].strip() == "-" else bytes.fromhex(match["payload"])
        frame = Frame(
            FrameType[match["type"]],
            int(match["address"], 16),
            int(match["seq"], 16),
            int(match["command"], 16),
            payload,
        )
        vectors.append(
            (match["name"], frame, bytes.fromhex(match["raw"]), bytes.fromhex(match["wire"]))
        )
    return vectors


def test_doc_has_vectors() -> None:
    names = [name for name, *_ in _doc_vectors()]
    assert len(names) >= 8
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(("name", "frame", "raw", "wire"), _doc_vectors())
def test_doc_vectors_match_code(name: str, frame: Frame, raw: bytes, wire: bytes) -> None:
    assert frame.to_bytes() == raw, name
    assert frame.encode() == wire, name
    assert decode_frame(wire[:-1]) == frame, name
    assert reference_crc16_ccitt_false(raw[:-2]) == int.from_bytes(raw[-2:], "big"), name
