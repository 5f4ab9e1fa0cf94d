"""Binary frame format of the serial control link (see ``docs/serial-protocol.md``).

A frame is::

    version(1) | address(1) | type(1) | seq(1) | command(1) | length(1) | payload | crc16(2)

with the CRC (CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final
xor) big-endian over every byte before it. The whole thing is COBS-encoded and
terminated by a single 0x00, so a receiver resynchronises at the next zero byte after
any corruption.

This module is pure: no I/O, no threads. Both ends (``SerialLink`` and the emulator)
use it.
"""

from __future__ import annotations

import binascii
import enum
from dataclasses import dataclass

from firmware_bridge.exceptions import FrameError

PROTOCOL_VERSION = 1
BROADCAST_ADDRESS = 0x00
MIN_UNIT_ADDRESS = 0x01
MAX_UNIT_ADDRESS = 0xF7  # 0xF8-0xFF reserved
HEADER_SIZE = 6
CRC_SIZE = 2
MAX_PAYLOAD = 240
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
# COBS adds one code byte per started run of 254 bytes; the 0x00 delimiter is not counted.
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1
DELIMITER = 0x00
CRC_INIT = 0xFFFF


class FrameType(enum.IntEnum):
    """What a frame is; the ``type`` byte."""

    REQUEST = 0x01
    RESPONSE = 0x02
    ACK = 0x03
    NAK = 0x04
    EVENT = 0x05


class NakReason(enum.IntEnum):
    """First payload byte of a NAK frame."""

    UNKNOWN_COMMAND = 0x01
    BAD_PAYLOAD = 0x02
    BUSY = 0x03
    FAILED = 0x04


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); ``crc16(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, CRC_INIT)


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no 0x00 byte."""
    out = bytearray()
    parts = data.split(b"\x00")
    last = len(parts) - 1
    for index, part in enumerate(parts):
        rest = part
        while len(rest) >= 254:
            out.append(0xFF)
            out += rest[:254]
            rest = rest[254:]
            if not rest and index == last:
                # A full 254-byte run at the very end needs no trailing code byte.
                return bytes(out)
        out.append(len(rest) + 1)
        out += rest
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Invert :func:`cobs_encode`; raises :class:`FrameError` on malformed input."""
    out = bytearray()
    index = 0
    size = len(data)
    while index < size:
        code = data[index]
        if code == 0:
            raise FrameError("COBS: zero byte inside a frame", data)
        end = index + code
        if end > size:
            raise FrameError("COBS: block runs past the end of the frame (truncated?)", data)
        block = data[index + 1 : end]
        if 0 in block:
            raise FrameError("COBS: zero byte inside a frame", data)
        out += block
        index = end
        if code != 0xFF and index < size:
            out.append(0)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. ``address`` is the unit's bus address in both directions."""

    type: FrameType
    address: int
    seq: int
    command: int
    payload: bytes = b""
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        for name in ("address", "seq", "command", "version"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise ValueError(f"frame {name} must fit in one byte, got {value!r}")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")

    def to_bytes(self) -> bytes:
        """The frame before COBS: header, payload and big-endian CRC."""
        body = (
            bytes(
                (
                    self.version,
                    self.address,
                    self.type,
                    self.seq,
                    self.command,
                    len(self.payload),
                )
            )
            + self.payload
        )
        return body + crc16(body).to_bytes(2, "big")

    def encode(self) -> bytes:
        """The bytes that go on the wire: COBS of :meth:`to_bytes` plus the 0x00 delimiter."""
        return cobs_encode(self.to_bytes()) + b"\x00"


def decode_frame(encoded: bytes) -> Frame:
    """Decode one COBS-encoded frame (without its 0x00 delimiter).

    Raises :class:`FrameError` with the offending bytes for anything malformed.
    """
    if len(encoded) > MAX_ENCODED:
        raise FrameError(f"oversize frame: {len(encoded)} bytes > {MAX_ENCODED}", encoded)
    raw = cobs_decode(encoded)
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        raise FrameError(f"truncated frame: {len(raw)} bytes", encoded)
    body, received_crc = raw[:-CRC_SIZE], int.from_bytes(raw[-CRC_SIZE:], "big")
    computed_crc = crc16(body)
    if received_crc != computed_crc:
        raise FrameError(
            f"bad CRC: frame says {received_crc:04x}, computed {computed_crc:04x}", encoded
        )
    version, address, type_byte, seq, command, length = body[:HEADER_SIZE]
    if version != PROTOCOL_VERSION:
        raise FrameError(
            f"unsupported protocol version {version} (this end speaks {PROTOCOL_VERSION})",
            encoded,
        )
    try:
        frame_type = FrameType(type_byte)
    except ValueError:
        raise FrameError(f"unknown frame type 0x{type_byte:02x}", encoded) from None
    payload = body[HEADER_SIZE:]
    if len(payload) != length:
        raise FrameError(
            f"length byte says {length} payload bytes, frame carries {len(payload)}", encoded
        )
    if length > MAX_PAYLOAD:
        raise FrameError(f"oversize payload: {length} bytes > {MAX_PAYLOAD}", encoded)
    return Frame(frame_type, address, seq, command, payload, version)


class FrameDecoder:
    """Splits a byte stream at 0x00 delimiters and decodes each frame.

    :meth:`feed` returns decoded frames and :class:`FrameError` objects in arrival
    order; it never raises. A run longer than ``MAX_ENCODED`` without a delimiter is
    reported once as oversize and skipped up to the next delimiter.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Add received bytes; return whatever complete frames they finish."""
        results: list[Frame | FrameError] = []
        chunks = data.split(b"\x00")
        for index, chunk in enumerate(chunks):
            complete = index < len(chunks) - 1
            if self._discarding:
                if complete:
                    self._discarding = False
                continue
            self._buffer += chunk
            if len(self._buffer) > MAX_ENCODED:
                results.append(
                    FrameError(
                        f"oversize frame: more than {MAX_ENCODED} bytes without a delimiter",
                        bytes(self._buffer[:64]),
                    )
                )
                self._buffer.clear()
                self._discarding = not complete
                continue
            if complete:
                encoded = bytes(self._buffer)
                self._buffer.clear()
                if not encoded:
                    continue  # back-to-back delimiters: nothing lost, nothing to report
                try:
                    results.append(decode_frame(encoded))
                except FrameError as exc:
                    results.append(exc)
        return results
