"""Remote-control requests: insert a row (the service pokes the controller), wait for the answer.

The CLI never talks MQTT: the controller's health monitor sends the command and records
what the cluster answered (see :mod:`loudspeaker.health`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlmodel import Session

from firmware_bridge.protocol import new_id
from loudspeaker.exceptions import NotFoundError
from loudspeaker.models import ClusterRecord, ControlRequest, ControlState, now

ACTIONS = ("volume", "power", "reboot", "diagnose")


def request_control(
    session: Session,
    cluster: str,
    action: str,
    args: dict[str, Any] | None = None,
    *,
    ttl_s: float = 60.0,
    created_by: str = "",
) -> ControlRequest:
    """Record a queued request; ``NotFoundError`` for an unknown cluster."""
    if action not in ACTIONS:
        raise NotFoundError(f"no control action {action!r}; known: {', '.join(ACTIONS)}")
    if session.get(ClusterRecord, cluster) is None:
        raise NotFoundError(f"no cluster {cluster!r} (see `loudspeaker clusters`)")
    t = now()
    req = ControlRequest(
        id=new_id(),
        cluster_id=cluster,
        action=action,
        args=args or {},
        state=ControlState.QUEUED.value,
        created_by=created_by,
        created_at=t,
        # Never let a stale reboot or power switch reach a box that comes back hours later.
        expires_at=t + timedelta(seconds=ttl_s),
    )
    session.add(req)
    session.commit()
    session.refresh(req)
    return req


def wait_final(
    session_factory: Callable[[], Session], request_id: str, *, timeout_s: float
) -> ControlRequest:
    """The request once it is final, or as it stands after ``timeout_s`` (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with session_factory() as s:
            current: ControlRequest | None = s.get(ControlRequest, request_id)
            if current is None:
                raise NotFoundError(f"no control request {request_id!r}")
            if ControlState(current.state).final or time.monotonic() >= deadline:
                s.expunge(current)
                return current
        time.sleep(0.1)
