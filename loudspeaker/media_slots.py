"""Who may hold one of the media server's connection slots, and who gives one up.

Pure bookkeeping, no sockets, so the policy is tested on its own (tests/test_media_slots.py).
The server holds at most ``capacity`` connections. A boxes' request head is one small
packet sent at once; a connection that has not finished its head is the cheapest thing to
lose. So when every slot is taken, a newcomer takes the slot of the oldest connection still
waiting for its head, from the source address holding the most connections (one flooding
address loses its own first; boxes behind one carrier NAT keep theirs as long as the
flood comes from elsewhere). When every slot is busy serving a body, the newcomer is
refused (the server answers 503 and closes at once): refusal, never a queue.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Slot(Generic[T]):
    """One admitted connection: its source address and whether its head has arrived."""

    source: str
    handle: T
    seq: int
    head_done: bool = False


@dataclass
class SlotTable(Generic[T]):
    """At most ``capacity`` slots; ``admit`` evicts or refuses when full."""

    capacity: int
    _slots: dict[int, Slot[T]] = field(default_factory=dict)
    _per_source: Counter[str] = field(default_factory=Counter)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    evicted: int = 0
    refused: int = 0

    def __len__(self) -> int:
        return len(self._slots)

    def admit(self, source: str, handle: T) -> tuple[Slot[T] | None, Slot[T] | None]:
        """Admit a new connection: (its slot or None if refused, the slot evicted for it)."""
        victim: Slot[T] | None = None
        if len(self._slots) >= self.capacity:
            victim = self._victim()
            if victim is None:
                self.refused += 1
                return None, None
            self.release(victim)
            self.evicted += 1
        slot = Slot(source, handle, next(self._seq))
        self._slots[slot.seq] = slot
        self._per_source[source] += 1
        return slot, victim

    def release(self, slot: Slot[T]) -> None:
        """Free ``slot`` (idempotent: an evicted connection's own clean-up calls it again)."""
        if self._slots.pop(slot.seq, None) is not None:
            self._per_source[slot.source] -= 1
            if self._per_source[slot.source] <= 0:
                del self._per_source[slot.source]

    def _victim(self) -> Slot[T] | None:
        # Highest count first, then the oldest (lowest seq): max over (count, -seq).
        waiting = [s for s in self._slots.values() if not s.head_done]
        if not waiting:
            return None
        return max(waiting, key=lambda s: (self._per_source[s.source], -s.seq))

    def handles(self) -> list[T]:
        """Every admitted connection's handle (to close them all at stop)."""
        return [s.handle for s in self._slots.values()]
