"""The conformance kit for box vendors: drive one box through every MUST of the protocol.

``loudspeaker conformance`` is its face. The kit acts as the box's controller: it connects
to the broker, signs with the box's key, serves its own test audio, sends commands and
judges the answers against docs/protocol.md, one check per rule, named by section.
"""

from __future__ import annotations

from loudspeaker.conformance.checks import (
    CHECKS,
    CheckResult,
    ConformanceKit,
    KitOptions,
)
from loudspeaker.conformance.harness import ConformanceError, route_address
from loudspeaker.conformance.report import as_json, counts, format_table, passed
from loudspeaker.conformance.setup import kit_options, selected_checks

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceError",
    "ConformanceKit",
    "KitOptions",
    "as_json",
    "counts",
    "format_table",
    "kit_options",
    "passed",
    "route_address",
    "selected_checks",
]
