"""Errors of the scheduling package. Root: :class:`ScheduleError`.

It derives from :class:`~loudspeaker.exceptions.LoudspeakerError` so the CLI reports it
like every other controller error: one line that says what to fix.
"""

from __future__ import annotations

from loudspeaker.exceptions import LoudspeakerError


class ScheduleError(LoudspeakerError):
    """Root of every error raised by ``schedules``."""


class SpecError(ScheduleError):
    """A time specification (``--at``, ``--daily``, ``--weekly``, ``--cron``...) is invalid."""


class ConflictError(ScheduleError):
    """Two priority items collide on a cluster: a person must choose the order."""


class QuietHoursError(ScheduleError):
    """A normal or priority item would play inside the site's quiet hours."""
