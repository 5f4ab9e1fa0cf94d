"""Errors of the scheduling package. Root: :class:`ScheduleError`.

``schedules`` is a pure calendar and imports nothing of the controller, so its root is
its own. Faces show these like the controller's errors: one line that says what to fix
(the CLI lists :class:`ScheduleError` beside ``LoudspeakerError`` in ``_error_types``).
"""

from __future__ import annotations


class ScheduleError(Exception):
    """Root of every error raised by ``schedules``."""


class SpecError(ScheduleError):
    """A time specification (``--at``, ``--daily``, ``--weekly``, ``--cron``...) is invalid."""


class ConflictError(ScheduleError):
    """Two priority items collide on a cluster: a person must choose the order."""


class QuietHoursError(ScheduleError):
    """A normal or priority item would play inside the site's quiet hours."""
