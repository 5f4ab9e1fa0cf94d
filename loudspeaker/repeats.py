"""How often an item plays and the pause between plays: the one rule for every path.

Broadcasts, emergencies and schedule entries all take ``repeat`` and ``gap``; they are
checked here and nowhere else.
"""

from __future__ import annotations

from loudspeaker.exceptions import InvalidRequest

MIN_REPEAT = 1
MAX_REPEAT = 10
MAX_GAP_S = 7200.0


def check_repeats(repeat: int, gap_s: float) -> None:
    """Refuse a repeat count outside 1..10 or a gap outside 0..7200 seconds."""
    if not MIN_REPEAT <= repeat <= MAX_REPEAT:
        raise InvalidRequest(f"--repeat must be between {MIN_REPEAT} and {MAX_REPEAT}")
    if not 0 <= gap_s <= MAX_GAP_S:
        raise InvalidRequest(f"--gap must be between 0 and {MAX_GAP_S:.0f} seconds")
