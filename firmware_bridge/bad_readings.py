"""Readings from the hardware that the wire models refuse (a broken sensor).

The protocol's models bound what a sensor can plausibly read (``rssi_dbm`` <= 0, a
current <= 100 A, ...). A value outside that is a broken sensor, which a technician must
see: it is named with its value in the report, never allowed to sink the whole heartbeat
or diagnose with a ``ValidationError``.
"""

from __future__ import annotations

from pydantic import ValidationError

# How long a message may get: ControlResult/DiagnoseReport reasons and last_error are 300.
_MAX = 300


def bad_fields(exc: ValidationError) -> dict[str, str]:
    """Each refused top-level field with its value and the bound it broke.

    ``{"rssi_dbm": "rssi_dbm=25 (Input should be less than or equal to 0)"}``.
    """
    out: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        loc = err.get("loc") or ("?",)
        name = str(loc[0])
        if name not in out:
            out[name] = f"{name}={err.get('input')!r} ({err.get('msg')})"
    return out


def describe(exc: ValidationError) -> str:
    """One line naming every refused reading and its value, for a report's ``reason``."""
    return ("reading out of range: " + "; ".join(bad_fields(exc).values()))[:_MAX]
