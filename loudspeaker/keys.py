"""Cluster signing keys on the controller: issue, rotate, activate, export, and sign.

Each cluster has its own HMAC key, so a box that is stolen and read out yields only the
key to its own loudspeakers. A key goes ``next`` (exported to the box, not yet used) ->
``active`` (the dispatcher signs with it) -> ``retired`` (kept in exports for a while so
the box can still accept commands already in flight). Secrets live in the database sealed
under the local key store (loudspeaker.keystore: a copied database yields no key) and in
the 0600 key files written for the boxes; they are never printed or logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from firmware_bridge.keys import KeyEntry, new_kid, new_secret, write_key_file
from firmware_bridge.protocol import AnyCommand, sign_command
from loudspeaker import audit
from loudspeaker.auth import Actor
from loudspeaker.db import as_utc
from loudspeaker.exceptions import InvalidRequest, KeystoreError, NotFoundError
from loudspeaker.keystore import Keystore, cluster_key_context
from loudspeaker.models import ClusterKey, ClusterRecord, now

logger = logging.getLogger(__name__)

NEXT, ACTIVE, RETIRED = "next", "active", "retired"
# Retired keys stay in exports this long: commands signed just before a switch still play.
RETIRED_KEPT = timedelta(days=1)
_C = TypeVar("_C", bound=AnyCommand)


@dataclass(frozen=True)
class KeyInfo:
    """A key as ``keys list`` shows it (no secret)."""

    cluster: str
    kid: str
    state: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None

    def to_json(self) -> dict[str, str | None]:
        """JSON-ready form."""
        return {
            "cluster": self.cluster,
            "kid": self.kid,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "activated_at": self.activated_at.isoformat() if self.activated_at else None,
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
        }


def _cluster(session: Session, cluster: str) -> ClusterRecord:
    rec = session.get(ClusterRecord, cluster)
    if rec is None:
        raise NotFoundError(f"no cluster {cluster!r} in the site (see `loudspeaker clusters`)")
    return rec


def _keys(session: Session, cluster: str, *states: str) -> list[ClusterKey]:
    q = select(ClusterKey).where(ClusterKey.cluster_id == cluster)
    if states:
        q = q.where(col(ClusterKey.state).in_(states))
    return list(session.exec(q.order_by(col(ClusterKey.created_at).desc())).all())


def secret_of(keystore: Keystore, key: ClusterKey) -> bytes:
    """The key's secret, opened from the key store (``KeystoreError`` says what is wrong)."""
    return keystore.open(key.secret_sealed, cluster_key_context(key.cluster_id, key.kid))


def _new_key(session: Session, keystore: Keystore, cluster: str, state: str) -> ClusterKey:
    taken = {k.kid for k in _keys(session, cluster)}
    kid = new_kid()
    while kid in taken:
        kid = new_kid()
    t = now()
    # Never a new key store while the database holds sealed keys: they would stay sealed
    # under the lost one, and the next rotate or export would fail with no way out.
    sealed = session.exec(select(ClusterKey.kid).limit(1)).first() is not None
    key = ClusterKey(
        cluster_id=cluster,
        kid=kid,
        secret_sealed=keystore.seal(
            new_secret(), cluster_key_context(cluster, kid), create=not sealed
        ),
        state=state,
        created_at=t,
        activated_at=t if state == ACTIVE else None,
    )
    session.add(key)
    return key


def issue(session: Session, cluster: str, actor: Actor, *, keystore: Keystore) -> ClusterKey:
    """Give a cluster its first key (active at once)."""
    _cluster(session, cluster)
    if _keys(session, cluster, ACTIVE, NEXT):
        raise InvalidRequest(
            f"{cluster} already has a key; use `keys rotate {cluster}` for a new one or "
            f"`keys export {cluster}` to write its key file again"
        )
    key = _new_key(session, keystore, cluster, ACTIVE)
    audit.record(
        session, actor.name, "keys.issue", cluster, detail={"kid": key.kid}, role=actor.role
    )
    return key


def rotate(session: Session, cluster: str, actor: Actor, *, keystore: Keystore) -> ClusterKey:
    """Create the cluster's next key; commands stay signed with the current one until
    :func:`activate`, so the box can be updated first and is never lost."""
    _cluster(session, cluster)
    if not _keys(session, cluster, ACTIVE):
        raise InvalidRequest(f"{cluster} has no key yet; use `keys issue {cluster}`")
    if pending := _keys(session, cluster, NEXT):
        raise InvalidRequest(
            f"{cluster} already has key {pending[0].kid} waiting: install its key file and "
            f"run `keys activate {cluster}` first"
        )
    key = _new_key(session, keystore, cluster, NEXT)
    audit.record(
        session, actor.name, "keys.rotate", cluster, detail={"kid": key.kid}, role=actor.role
    )
    return key


def activate(session: Session, cluster: str, actor: Actor) -> ClusterKey:
    """Start signing with the next key; the old one is retired (still exported a day)."""
    _cluster(session, cluster)
    pending = _keys(session, cluster, NEXT)
    if not pending:
        raise InvalidRequest(f"{cluster} has no key waiting; `keys rotate {cluster}` first")
    t = now()
    old = _keys(session, cluster, ACTIVE)
    for k in old:
        k.state, k.retired_at = RETIRED, t
        session.add(k)
    new = pending[0]
    new.state, new.activated_at = ACTIVE, t
    session.add(new)
    audit.record(
        session,
        actor.name,
        "keys.activate",
        cluster,
        detail={"kid": new.kid, "retired": [k.kid for k in old]},
        role=actor.role,
    )
    return new


def export(
    session: Session, site: str, cluster: str, path: Path, actor: Actor, *, keystore: Keystore
) -> list[str]:
    """Write the box's key file (next, active, recently retired keys); returns the key ids."""
    _cluster(session, cluster)
    t = now()
    keep: list[ClusterKey] = []
    for k in _keys(session, cluster):
        retired = as_utc(k.retired_at)
        if k.state in (NEXT, ACTIVE) or (retired is not None and t - retired < RETIRED_KEPT):
            keep.append(k)
    if not keep:
        raise InvalidRequest(f"{cluster} has no key; use `keys issue {cluster}`")
    order = {NEXT: 0, ACTIVE: 1, RETIRED: 2}
    keep.sort(key=lambda k: (order[k.state], -(as_utc(k.created_at) or t).timestamp()))
    entries = [
        KeyEntry(
            kid=k.kid,
            secret=secret_of(keystore, k),
            created=(as_utc(k.created_at) or t).isoformat(),
        )
        for k in keep
    ]
    write_key_file(path, site, cluster, entries)
    audit.record(
        session,
        actor.name,
        "keys.export",
        cluster,
        detail={"kids": [k.kid for k in keep], "file": str(path)},
        role=actor.role,
    )
    return [k.kid for k in keep]


def reset_unopenable(session: Session, actor: Actor, *, keystore: Keystore) -> list[KeyInfo]:
    """Drop every key the key store cannot open (it is lost or replaced); returns them.

    The way out when the key store that sealed the keys is gone and there is no backup:
    afterwards ``issue`` works again for the clusters that lost their keys. A key store that
    is there but unreadable (permissions, size) is an error, not a reason to drop anything.
    """
    if keystore.exists():
        keystore.check()
    dropped: list[ClusterKey] = []
    for k in session.exec(select(ClusterKey)).all():
        try:
            secret_of(keystore, k)
        except KeystoreError:
            dropped.append(k)
    infos = [_info(k) for k in dropped]
    for k in dropped:
        session.delete(k)
    audit.record(
        session,
        actor.name,
        "keys.reset",
        "*",
        detail={
            "keystore": str(keystore.path),
            "dropped": [f"{k.cluster}/{k.kid}" for k in infos],
        },
        role=actor.role,
    )
    return infos


def check_active_keys(engine: Engine, keystore: Keystore) -> int:
    """Open every active key once; ``KeystoreError`` if one cannot be (``serve`` refuses to
    start rather than send commands no box accepts). Returns how many were opened."""
    with Session(engine) as s:
        rows = s.exec(select(ClusterKey).where(ClusterKey.state == ACTIVE)).all()
    for k in rows:
        secret_of(keystore, k)
    return len(rows)


def _info(k: ClusterKey) -> KeyInfo:
    created = as_utc(k.created_at)
    assert created is not None
    return KeyInfo(
        k.cluster_id, k.kid, k.state, created, as_utc(k.activated_at), as_utc(k.retired_at)
    )


def list_keys(session: Session) -> list[KeyInfo]:
    """Every key of every cluster, without secrets."""
    rows = session.exec(
        select(ClusterKey).order_by(col(ClusterKey.cluster_id), col(ClusterKey.created_at))
    ).all()
    return [_info(k) for k in rows]


class CommandSigner:
    """Signs outgoing commands with each cluster's active key (the dispatcher's helper).

    Active keys are re-read at most every ``refresh_s`` seconds, so ``keys activate``
    takes effect within that time without a restart. They are opened with ``keystore``.
    A cluster that has no key (never issued) gets its commands unsigned, with one warning.
    A cluster whose key cannot be opened (the key store is missing or another one) gets
    nothing: :meth:`sign` raises ``KeystoreError`` naming the key store, so the caller
    fails that delivery with the reason instead of sending what every keyed box refuses.
    """

    def __init__(self, engine: Engine, keystore: Keystore, refresh_s: float = 1.0) -> None:
        self.engine = engine
        self.keystore = keystore
        self.refresh_s = refresh_s
        self._keys: dict[str, tuple[str, bytes]] = {}
        self._unopened: dict[str, KeystoreError] = {}
        self._loaded = float("-inf")
        # "cluster/kid" (unopenable key) or "cluster/" (no key): each logged once.
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def _warn_once(self, what: str, level: int, msg: str, *args: object) -> None:
        if what not in self._warned:
            self._warned.add(what)
            logger.log(level, msg, *args)

    def _refresh(self) -> None:
        if time.monotonic() - self._loaded < self.refresh_s:
            return
        with Session(self.engine) as s:
            rows = s.exec(select(ClusterKey).where(ClusterKey.state == ACTIVE)).all()
        keys: dict[str, tuple[str, bytes]] = {}
        unopened: dict[str, KeystoreError] = {}
        for k in rows:
            try:
                keys[k.cluster_id] = (k.kid, secret_of(self.keystore, k))
            except KeystoreError as exc:
                unopened[k.cluster_id] = exc
                self._warn_once(
                    f"{k.cluster_id}/{k.kid}",
                    logging.ERROR,
                    "cannot sign for cluster %s: %s",
                    k.cluster_id,
                    exc,
                )
        self._keys = keys
        self._unopened = unopened
        self._loaded = time.monotonic()

    def sign(self, command: _C) -> _C:
        """The command signed with its cluster's active key (unsigned if it has none).

        Raises ``KeystoreError`` if the cluster has a key that cannot be opened.
        """
        with self._lock:
            self._refresh()
            found = self._keys.get(command.cluster)
            if found is None:
                if (exc := self._unopened.get(command.cluster)) is not None:
                    raise KeystoreError(f"not signed, so not sent: {exc}")
                self._warn_once(
                    f"{command.cluster}/",
                    logging.WARNING,
                    "cluster %s has no signing key: its commands go out unsigned; run "
                    "`loudspeaker keys issue %s`",
                    command.cluster,
                    command.cluster,
                )
                return command
        kid, secret = found
        return sign_command(command, secret, kid)
