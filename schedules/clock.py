"""Cluster clock offsets: a box that plays by its own clock must have the right time.

Every acknowledgement carries the cluster's time (``ts``). The controller notes when it
received it; ``ts - received`` is the cluster's offset minus the transit delay (which is
never negative), so the largest of the recent samples is the best estimate: the one
with the least delay. A cluster that seems *behind* may only be slow to deliver: acks
queued by the broker during an outage arrive late in a burst. So a negative estimate only
counts once the samples span :data:`MIN_SPAN`; a positive one cannot come from delay and
counts at once. Pure logic: the runner feeds it and stores the result.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

logger = logging.getLogger(__name__)

SAMPLES = 20
MIN_SPAN = timedelta(seconds=30)


@dataclass(frozen=True)
class Offset:
    """A cluster's estimated clock offset (positive: the cluster is ahead)."""

    cluster: str
    offset_s: float
    measured_at: datetime


class ClockWatch:
    """Keeps recent offset samples per cluster; warns when one crosses ``warn_s``."""

    def __init__(self, warn_s: float) -> None:
        self.warn_s = warn_s
        self._samples: dict[str, deque[tuple[datetime, float]]] = {}
        self._latest: dict[str, Offset] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def observe(self, cluster: str, cluster_ts: datetime, received_at: datetime) -> Offset:
        """Record one sample; log a warning when the estimate goes over the threshold."""
        sample = (cluster_ts - received_at).total_seconds()
        with self._lock:
            q = self._samples.setdefault(cluster, deque(maxlen=SAMPLES))
            q.append((received_at, sample))
            estimate = Offset(cluster, max(v for _, v in q), received_at)
            self._latest[cluster] = estimate
            span = q[-1][0] - q[0][0]
            over = estimate.offset_s > self.warn_s or (
                estimate.offset_s < -self.warn_s and span >= MIN_SPAN and len(q) >= 3
            )
            newly = over and cluster not in self._warned
            if over:
                self._warned.add(cluster)
            elif cluster in self._warned:
                self._warned.discard(cluster)
                logger.info("clock of cluster %s is back within %.1f s", cluster, self.warn_s)
        if newly:
            logger.warning(
                "clock of cluster %s is %+.1f s off the controller's (threshold %.1f s): "
                "scheduled bulletins there will play that much early or late; check its NTP",
                cluster,
                estimate.offset_s,
                self.warn_s,
            )
        return estimate

    def offsets(self) -> list[Offset]:
        """The latest estimate of every cluster heard from."""
        with self._lock:
            return sorted(self._latest.values(), key=lambda o: o.cluster)

    def warnings(self) -> list[Offset]:
        """Clusters whose offset is over the threshold now (as warned)."""
        with self._lock:
            return [self._latest[c] for c in sorted(self._warned)]
