"""Per-cluster rate limit of inbound messages: one box cannot flood the controller.

Every message a box publishes (status, heartbeat, ack, control result; valid or not)
takes a token from its cluster's bucket. A box within :class:`RateLimit` is never
noticed. Past it, the inbound router keeps only what cannot be lost (the latest status
and heartbeat, acks of commands the controller waits on) and the health monitor raises a
``flooding`` alarm naming the box, cleared once it has kept within the limit for
``calm_s`` seconds (docs/protocol.md, "Limits"; docs/health.md).

Runs on the MQTT loop thread; the health monitor reads :meth:`FloodGuard.flooding` from
its own thread, under the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RateLimit:
    """What one box may send: ``rate_per_s`` sustained, bursts up to ``burst``.

    A healthy box sends a heartbeat every 30 s, a status per (re)connect and about four
    acks per command, so a 500-item schedule sync (two thousand acks in a minute) stays
    well inside 50/s with a 1,000 burst while 20,000 toggles in 6 s do not.
    """

    rate_per_s: float = 50.0
    burst: float = 1000.0
    calm_s: float = 10.0  # within the limit this long before the alarm clears


@dataclass
class _Bucket:
    tokens: float
    updated: float
    flooding_since: float | None = None
    last_over: float = 0.0
    over: int = 0  # messages past the limit since the flood began
    received: int = 0  # every message since the flood began


@dataclass
class FloodGuard:
    """Token buckets by cluster; says which clusters flood now (thread safe)."""

    limit: RateLimit = field(default_factory=RateLimit)
    clock: Callable[[], float] = time.monotonic
    # A box only publishes on its own topics (broker ACL), but a broker without ACLs
    # lets anyone invent cluster ids: idle buckets are forgotten past this many.
    max_clusters: int = 100_000

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, cluster: str) -> bool:
        """Take a token for a message from ``cluster``; False: it is over the limit."""
        t = self.clock()
        with self._lock:
            b = self._buckets.get(cluster)
            if b is None:
                if len(self._buckets) >= self.max_clusters:
                    self._forget_idle(t)
                b = self._buckets[cluster] = _Bucket(self.limit.burst, t)
            b.tokens = min(self.limit.burst, b.tokens + (t - b.updated) * self.limit.rate_per_s)
            b.updated = t
            if b.flooding_since is not None:
                b.received += 1
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return True
            if b.flooding_since is None:
                b.flooding_since, b.over, b.received = t, 0, 1
            b.over += 1
            b.last_over = t
            return False

    def flooding(self, cluster: str) -> str | None:
        """Why ``cluster`` counts as flooding now (for the alarm), or None when it does not."""
        t = self.clock()
        with self._lock:
            b = self._buckets.get(cluster)
            if b is None or b.flooding_since is None:
                return None
            if t - b.last_over >= self.limit.calm_s:
                b.flooding_since = None
                return None
            lim = self.limit
            return (
                f"{b.received} messages in {t - b.flooding_since:.0f} s, over the limit of "
                f"{lim.rate_per_s:g}/s (bursts of {lim.burst:g}); {b.over} past it"
            )

    def flooding_clusters(self) -> list[str]:
        """Clusters flooding now (for tests and the metrics)."""
        with self._lock:
            names = [c for c, b in self._buckets.items() if b.flooding_since is not None]
        return [c for c in names if self.flooding(c) is not None]

    def _forget_idle(self, t: float) -> None:
        full = [
            c
            for c, b in self._buckets.items()
            if b.flooding_since is None
            and b.tokens + (t - b.updated) * self.limit.rate_per_s >= self.limit.burst
        ]
        for c in full:
            del self._buckets[c]
