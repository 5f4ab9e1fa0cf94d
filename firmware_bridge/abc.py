"""Interfaces of the cluster side that have several implementations."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from enum import StrEnum
from pathlib import Path


class PlayResult(StrEnum):
    """How a call to :meth:`AudioSink.play` ended."""

    COMPLETED = "completed"
    STOPPED = "stopped"


class AudioSink(ABC):
    """Where a cluster's audio goes: a real player, or a simulated amplifier."""

    name: str = "sink"

    def start(self) -> None:  # noqa: B027 - optional hook, most sinks need none
        """Acquire what the sink needs (devices, processes)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` acquired."""

    def set_volume(self, percent: int) -> None:  # noqa: B027 - optional hook
        """Set the output volume (0-100) for what plays next; sinks without one ignore it."""

    @abstractmethod
    def play(self, path: Path, *, duration_s: float, stop: threading.Event) -> PlayResult:
        """Play ``path`` to the end, or until ``stop`` is set; raise ``SinkError`` on failure."""
