"""Vietnamese text normalization (placeholder: full rules follow)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path


def normalize_text(text: str, *, extra_abbreviations: Path | None = None) -> str:
    """Return ``text`` as it should be spoken."""
    del extra_abbreviations
    text = unicodedata.normalize("NFC", text)
    return re.sub(r"[ \t]+", " ", text).strip()
