"""Errors of the controller side. One root: :class:`LoudspeakerError`.

Every message is written for the person at the keyboard: it says what to fix.
"""

from __future__ import annotations


class LoudspeakerError(Exception):
    """Root of every error raised by ``loudspeaker``."""


class ConfigError(LoudspeakerError):
    """A setting is missing or invalid."""


class SiteError(LoudspeakerError):
    """The site file is invalid; the message names the field and line."""


class KeystoreError(LoudspeakerError):
    """The key store that seals the cluster signing keys is missing, unreadable or wrong."""


class StorageError(LoudspeakerError):
    """The database cannot be opened or written."""


class BrokerStartError(LoudspeakerError):
    """The embedded mosquitto could not be started."""


class NotFoundError(LoudspeakerError):
    """An id given on the command line does not exist."""


class TargetError(LoudspeakerError):
    """A ``--to`` target does not name any cluster of the site."""


class ControllerNotRunning(LoudspeakerError):
    """The command needs ``loudspeaker serve`` and it is not running."""


class ReportError(LoudspeakerError):
    """A log or report cannot be produced (bad period, filter or output path)."""


class AuthError(LoudspeakerError):
    """Who is acting could not be established (no, unknown or unsafe token)."""


class PermissionDenied(LoudspeakerError):
    """The acting user's role lacks the permission; the message names it."""


class InvalidRequest(LoudspeakerError):
    """A request cannot be carried out as given (a value out of range, options that clash)."""
