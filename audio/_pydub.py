"""The one place pydub is imported.

pydub 0.25.1 imports the stdlib ``audioop`` (deprecated in Python 3.11, removed in 3.13,
where the ``audioop-lts`` package replaces it) and warns at import time when no ffmpeg is on
PATH. We never let pydub look for ffmpeg itself: we only use it on raw PCM in memory, and
decode/encode through :mod:`audio.ffmpeg`. So both warnings are noise and are silenced here,
narrowly, instead of everywhere pydub is used.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="'audioop' is deprecated", category=DeprecationWarning
    )
    warnings.filterwarnings("ignore", message="Couldn't find ff", category=RuntimeWarning)
    from pydub import AudioSegment
    from pydub.silence import detect_leading_silence

__all__ = ["AudioSegment", "detect_leading_silence"]
