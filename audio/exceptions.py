"""Errors raised by the audio package.

Everything the package raises derives from :class:`AudioError`, so a caller (the CLI, the
scheduler) can catch one type and show ``str(error)``: each message says what to do.
"""

from __future__ import annotations


class AudioError(Exception):
    """Root of every error raised by the audio package."""


class InvalidAudioSettings(AudioError, ValueError):
    """An AudioSettings field is out of range."""


class FfmpegNotFound(AudioError):
    """No working ffmpeg executable was found."""


class FfmpegFailed(AudioError):
    """ffmpeg ran but failed or timed out; ``stderr`` holds its log."""

    def __init__(self, message: str, stderr: bytes = b"") -> None:
        super().__init__(message)
        self.stderr = stderr


class EmptyText(AudioError, ValueError):
    """The text has nothing to speak after normalization."""


class TtsError(AudioError):
    """A text-to-speech engine could not render the text."""


class TtsUnavailable(TtsError):
    """The engine cannot be reached right now (network down, timeout, rate limit)."""


class UnknownEngine(AudioError, ValueError):
    """The engine name is not one of the supported values."""


class UnknownTone(AudioError, ValueError):
    """The tone kind is not one of the supported values."""


class RecordingRejected(AudioError):
    """A recording was refused; ``reason`` is a short machine-readable code.

    Codes: ``missing``, ``empty``, ``not_audio``, ``corrupt``, ``silent``, ``too_long``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
