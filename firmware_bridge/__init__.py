"""The cluster side: agent, MQTT plumbing, serial link, simulator.

Runs on a small receiver box, so it imports no database, scheduler or web framework.
"""

from __future__ import annotations

__version__ = "0.1.0"
