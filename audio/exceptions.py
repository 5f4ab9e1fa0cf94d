"""Errors of the audio package. One root: :class:`AudioError`."""

from __future__ import annotations


class AudioError(Exception):
    """Root of every error raised by ``audio``."""
