"""Errors raised by the cluster side. One root: :class:`BridgeError`."""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error raised by ``firmware_bridge``."""


class ProtocolError(BridgeError):
    """A message on the wire does not follow ``docs/protocol.md``."""


class BrokerError(BridgeError):
    """The MQTT broker could not be reached or refused us."""


class MediaError(BridgeError):
    """Announcement audio could not be fetched or failed verification."""


class SinkError(BridgeError):
    """The audio sink could not play an item."""


class HardwareError(BridgeError):
    """The box's hardware (MCU, relay, sensors) did not do what was asked."""
