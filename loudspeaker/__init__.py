"""The commune controller: site, storage, broker, media server, dispatcher, reports."""

from __future__ import annotations

__version__ = "0.1.0"
