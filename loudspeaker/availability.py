"""Whether each cluster is online: its status row and the history of online/offline spells.

Written by the dispatcher's thread from the clusters' retained status messages.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlmodel import Session, col, select

from firmware_bridge.protocol import Status
from loudspeaker.models import ClusterAvailability, ClusterStatus

logger = logging.getLogger(__name__)


def record_status(s: Session, status: Status, at: datetime) -> bool:
    """Store ``status`` received at ``at``; True when the cluster changed online/offline."""
    online = status.state == "online"
    st = s.get(ClusterStatus, status.cluster) or ClusterStatus(cluster_id=status.cluster)
    changed = st.online != online or st.since is None
    st.last_seen = at
    st.agent = status.agent or st.agent
    st.reason = status.reason or ""
    if changed:
        st.online = online
        st.since = at
        _record_interval(s, status.cluster, online, at, status.reason or "")
        logger.info(
            "cluster %s is %s%s",
            status.cluster,
            status.state,
            f" ({status.reason})" if status.reason else "",
        )
    s.add(st)
    return changed


def touch(s: Session, cluster: str, at: datetime) -> None:
    """The cluster was heard from at ``at``."""
    st = s.get(ClusterStatus, cluster)
    if st is not None:
        st.last_seen = at
        s.add(st)


def _record_interval(s: Session, cluster: str, online: bool, at: datetime, reason: str) -> None:
    open_rows = s.exec(
        select(ClusterAvailability).where(
            ClusterAvailability.cluster_id == cluster,
            col(ClusterAvailability.ended_at).is_(None),
        )
    ).all()
    for row in open_rows:
        row.ended_at = at
        s.add(row)
    s.add(ClusterAvailability(cluster_id=cluster, online=online, started_at=at, reason=reason))
