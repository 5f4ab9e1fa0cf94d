"""Remote-control requests as the CLI makes them: insert a row, poke, wait for the answer.

The CLI never talks MQTT: the controller's health monitor sends the command and records
what the cluster answered (see :mod:`loudspeaker.health`).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlmodel import Session

from firmware_bridge.protocol import new_id
from loudspeaker.exceptions import ControllerNotRunning, NotFoundError
from loudspeaker.models import ClusterRecord, ControlRequest, ControlState, now
from loudspeaker.runtime import ControllerCard

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


def send_and_wait(
    session_factory: Any,
    card: ControllerCard | None,
    cluster: str,
    action: str,
    args: dict[str, Any] | None = None,
    *,
    timeout_s: float,
    created_by: str = "",
) -> ControlRequest:
    """Queue a request, poke the controller, wait (bounded) until it is final."""
    if card is None:
        raise ControllerNotRunning(
            "the controller is not running: start `loudspeaker serve` first "
            "(control commands are not queued for later)"
        )
    with session_factory() as s:
        req = request_control(
            s, cluster, action, args, ttl_s=max(timeout_s, 10.0), created_by=created_by
        )
        req_id = req.id
    card.poke()
    deadline = time.monotonic() + timeout_s
    while True:
        with session_factory() as s:
            current: ControlRequest | None = s.get(ControlRequest, req_id)
            assert current is not None
            if ControlState(current.state).final or time.monotonic() >= deadline:
                s.expunge(current)
                return current
        time.sleep(0.1)
