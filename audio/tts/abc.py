"""The interface every text-to-speech engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from audio.pcm import Pcm

ProgressFn = Callable[[float], None]
"""Called with the fraction done, 0.0 to 1.0."""


class TtsEngine(ABC):
    """Turns normalized Vietnamese text into PCM.

    Engines receive text that :func:`audio.normalize.normalize_text` already prepared
    (numbers, dates and abbreviations spelled out) and must not change its words.
    """

    #: Short name reported in ``RenderedAudio.engine`` ("espeak-ng", "gtts").
    name: str

    @property
    @abstractmethod
    def identity(self) -> str:
        """A string that changes whenever the engine would produce different audio
        for the same text (voice, version, rate); part of the render-cache key."""

    @abstractmethod
    def synthesize(
        self, text: str, *, speed: float = 1.0, progress: ProgressFn | None = None
    ) -> Pcm:
        """Speak ``text`` at ``speed`` (1.0 = the engine's normal rate).

        Raises:
            TtsUnavailable: the engine cannot be used right now (missing, offline, timeout).
            TtsError: the engine failed on this text.
        """
