"""Errors raised by the cluster side. One root: :class:`BridgeError`."""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error raised by ``firmware_bridge``."""


class ProtocolError(BridgeError):
    """A message on the wire does not follow ``docs/protocol.md``."""


class PayloadTooLarge(ProtocolError):
    """A payload over the size limit: refused before it is parsed."""


class PayloadTooDeep(ProtocolError):
    """JSON nested deeper than the protocol allows: refused before it is parsed."""


class BrokerError(BridgeError):
    """The MQTT broker could not be reached or refused us."""


class MediaError(BridgeError):
    """Announcement audio could not be fetched or failed verification."""


class MediaUnavailable(MediaError):
    """The media server could not be reached (or answered 5xx): worth trying again later."""


class SinkError(BridgeError):
    """The audio sink could not play an item."""


class FrameError(BridgeError):
    """A serial frame could not be decoded (bad CRC, truncated, oversize, wrong version...).

    ``data`` holds the offending bytes so the receive loop can log them before dropping.
    """

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data


class SerialLinkError(BridgeError):
    """The serial link could not carry a request."""


class LinkDownError(SerialLinkError):
    """The serial port is closed, unplugged or the link was stopped."""


class LinkTimeoutError(SerialLinkError):
    """No valid answer arrived after every retransmission allowed by the retry policy."""


class NakError(SerialLinkError):
    """The receiver got the request intact but refused it (NAK); ``reason`` is its code."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


class McuResponseError(BridgeError):
    """The microcontroller answered with a payload that does not make sense."""


class CommandRefused(ProtocolError):
    """A command failed authentication or freshness checks: it must never be acted on."""


class UnsignedCommand(CommandRefused):
    """A command carries no signature but this box holds a key."""


class UnknownKey(CommandRefused):
    """A command is signed with a key id this box does not hold (or has retired)."""


class BadSignature(CommandRefused):
    """A command's signature does not match its content: wrong key or altered in transit."""


class StaleCommand(CommandRefused):
    """A command is expired, issued in the future, or claims too long a lifetime."""


class KeyFileError(BridgeError):
    """The cluster's key file is missing, unreadable, malformed or too open."""


class HardwareError(BridgeError):
    """The box's hardware (MCU, relay, sensors) did not do what was asked."""


class GatewayError(BridgeError):
    """The serial gateway cannot run as configured (site file, ports, addresses)."""
