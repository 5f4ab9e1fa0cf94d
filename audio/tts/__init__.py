"""Text-to-speech engines behind one interface (:class:`audio.tts.abc.TtsEngine`)."""

from __future__ import annotations

from audio.tts.abc import ProgressFn, TtsEngine

__all__ = ["ProgressFn", "TtsEngine"]
