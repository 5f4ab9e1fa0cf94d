"""The controller's file-descriptor budget, checked once at start.

Everything the controller holds open is a descriptor: the broker link, the database
pool, logs, the embedded broker's pipes, and up to two per media connection (the socket
and the file being sent). Run out, and the dispatcher's next ``open`` fails with
``EMFILE`` in the middle of an emergency. So at start the soft ``RLIMIT_NOFILE`` is raised
as far as the hard limit allows, and if the budget still does not fit, the media server's
connection cap is lowered to what fits, with a warning that says what to change; below
:data:`MIN_CONNECTIONS` the controller refuses to start (docs/architecture.md).
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from loudspeaker.exceptions import ConfigError

logger = logging.getLogger(__name__)

# Broker link, database pool (SQLAlchemy: 5 + 10 overflow), logs, stdio, the embedded
# broker's pipes, event-loop and thread-pool descriptors, listening sockets, the media
# server's accept burst (32) and evicted sockets not yet closed, and room.
BASE_DESCRIPTORS = 128
PER_CONNECTION = 2
MIN_CONNECTIONS = 16


@dataclass(frozen=True)
class Budget:
    """What start-up found and decided."""

    soft: int
    hard: int
    max_connections: int
    raised: bool
    lowered: bool


def needed(max_connections: int) -> int:
    """Descriptors the controller needs with ``max_connections`` media connections."""
    return BASE_DESCRIPTORS + PER_CONNECTION * max_connections


def ensure_descriptors(max_connections: int) -> Budget:
    """Raise the soft limit towards the hard one; fit the media cap to what there is.

    Raises ``ConfigError`` when not even :data:`MIN_CONNECTIONS` connections fit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed(max_connections)
    raised = False
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        # All the way to the hard limit: the embedded broker (a child) inherits it and
        # holds one descriptor per box. With no hard limit, what the budget asks for.
        target = max(want, soft) if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft, raised = target, True
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return Budget(soft, hard, max_connections, raised, lowered=False)
    fit = (soft - BASE_DESCRIPTORS) // PER_CONNECTION
    if fit < MIN_CONNECTIONS:
        raise ConfigError(
            f"the open-file limit is {soft} (hard {hard}): too low to serve media safely; "
            f"the controller needs at least {needed(MIN_CONNECTIONS)} "
            f"({want} for {max_connections} media connections). Raise it "
            "(systemd: LimitNOFILE=; shell: ulimit -n) and start again."
        )
    logger.warning(
        "open-file limit %d (hard %d) cannot hold %d media connections (%d descriptors "
        "needed): serving at most %d at once; raise LimitNOFILE= (systemd) or ulimit -n, "
        "or set LOUDSPEAKER_HTTP_MAX_CONNECTIONS",
        soft,
        hard,
        max_connections,
        want,
        fit,
    )
    return Budget(soft, hard, fit, raised, lowered=True)
