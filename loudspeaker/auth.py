"""Who is acting, and what they may do: users, roles, permissions, one check function.

Identity. Every user has a random token (``lst_`` + 43 URL-safe characters, 256 bits);
the database keeps only its SHA-256 (a slow hash buys nothing for a 256-bit random
secret). The CLI takes the token from, in order: ``$LOUDSPEAKER_TOKEN``, the file named by
``$LOUDSPEAKER_TOKEN_FILE``, or ``~/.config/loudspeaker/token``; a token file must be
mode 0600. There is deliberately no ``--token`` option: command lines are visible to
every local user in ``ps`` and stay in shell history.

Bootstrap. While the users table is empty there is nobody to authenticate, so the CLI
acts as the local operator ``local`` with every permission and warns on every command.
The first ``loudspeaker users add NAME --role admin`` ends that: from then on every
command needs a valid token. (Threat model: until then, anyone who can run the CLI
against this database can do anything; docs/security.md.)

Commands call :func:`require` once, before acting; a refusal names the missing permission
and is written to the audit log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import weakref
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sqlmodel import Session, func, select

from firmware_bridge.exceptions import KeyFileError
from firmware_bridge.keys import check_private
from loudspeaker import audit
from loudspeaker.exceptions import AuthError, PermissionDenied
from loudspeaker.models import ClusterRecord, UserRecord

logger = logging.getLogger(__name__)

ENV_TOKEN = "LOUDSPEAKER_TOKEN"
ENV_TOKEN_FILE = "LOUDSPEAKER_TOKEN_FILE"
TOKEN_PREFIX = "lst_"


class Role(StrEnum):
    """The four roles of the commune's staff."""

    OFFICER = "officer"
    HAMLET_HEAD = "hamlet-head"
    TECHNICIAN = "technician"
    ADMIN = "admin"


class Permission(StrEnum):
    """What a command needs. New commands pick one of these (or add one here)."""

    VIEW = "view"  # status, lists, site show, broadcast status
    BROADCAST = "broadcast"  # announcements now
    EMERGENCY = "emergency"  # emergency broadcasts, pre-empting everything
    SCHEDULE = "schedule"  # create/change/delete scheduled programmes
    REPORT = "report"  # broadcast and status reports, upward reporting
    DIAGNOSE = "diagnose"  # fault diagnosis, health history
    CONTROL = "control"  # remote control of clusters: relays, volume, stop, restart
    USERS = "users"  # add, remove, change roles
    SITE = "site"  # load the site file
    KEYS = "keys"  # cluster signing keys, broker credentials
    AUDIT = "audit"  # read and verify the audit log


P = Permission
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    # Emergencies for the officer too: a flood warning for all eight hamlets must not wait
    # for eight hamlet heads (docs/security.md, "Roles").
    Role.OFFICER: frozenset({P.VIEW, P.BROADCAST, P.EMERGENCY, P.SCHEDULE, P.REPORT}),
    Role.HAMLET_HEAD: frozenset({P.VIEW, P.BROADCAST, P.EMERGENCY}),
    Role.TECHNICIAN: frozenset({P.VIEW, P.DIAGNOSE, P.CONTROL}),
    Role.ADMIN: frozenset({P.VIEW, P.USERS, P.SITE, P.KEYS, P.AUDIT, P.REPORT}),
}
# For hamlet heads these permissions reach their own hamlet only.
HAMLET_SCOPED = frozenset({P.BROADCAST, P.EMERGENCY})
BOOTSTRAP_ROLE = "local-bootstrap"


@dataclass(frozen=True)
class Actor:
    """The person a command runs as."""

    name: str
    role: str
    hamlet: str | None = None
    bootstrap: bool = False

    @property
    def permissions(self) -> frozenset[Permission]:
        """Everything this actor's role grants."""
        if self.bootstrap:
            return frozenset(Permission)
        return ROLE_PERMISSIONS.get(Role(self.role), frozenset())


def default_token_path() -> Path:
    """``$LOUDSPEAKER_TOKEN_FILE``, else ``$XDG_CONFIG_HOME/loudspeaker/token``."""
    if os.environ.get(ENV_TOKEN_FILE):
        return Path(os.environ[ENV_TOKEN_FILE]).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "loudspeaker" / "token"


def hash_token(token: str) -> str:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh user token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def read_token() -> str | None:
    """The token of whoever runs this process, or None if they gave none."""
    token = os.environ.get(ENV_TOKEN, "").strip()
    if token:
        return token
    path = default_token_path()
    if not path.exists():
        if os.environ.get(ENV_TOKEN_FILE):
            raise AuthError(f"{ENV_TOKEN_FILE} names {path}, which does not exist")
        return None
    try:
        check_private(path)
        return path.read_text(encoding="utf-8").strip() or None
    except KeyFileError as exc:
        raise AuthError(f"token file refused: {exc}") from None
    except OSError as exc:
        raise AuthError(f"cannot read token file {path}: {exc.strerror}") from None


def user_count(session: Session) -> int:
    """How many users exist (0: bootstrap mode)."""
    return int(session.exec(select(func.count()).select_from(UserRecord)).one())


def authenticate(session: Session) -> Actor:
    """The actor for this process's token; the bootstrap actor while there are no users."""
    if user_count(session) == 0:
        logger.warning(
            "no users are defined: acting as local operator with every permission; "
            "create the first admin with `loudspeaker users add NAME --role admin`"
        )
        return Actor(name="local", role=BOOTSTRAP_ROLE, bootstrap=True)
    token = read_token()
    if token is None:
        raise AuthError(
            "who are you? this controller has users, so every command needs a token: put "
            f"yours in {default_token_path()} (mode 0600), or set {ENV_TOKEN_FILE} or "
            f"{ENV_TOKEN}"
        )
    user = session.exec(
        select(UserRecord).where(UserRecord.token_sha256 == hash_token(token))
    ).first()
    if user is None:
        audit.record(session, "?", "auth.login", outcome=audit.Outcome.DENIED, commit=True)
        raise AuthError("the token is not valid (unknown or revoked); ask an admin for a new one")
    return Actor(name=user.name, role=user.role, hamlet=user.hamlet_id)


class _HasSession(Protocol):
    def session(self) -> Session: ...


# One identity per CLI invocation: the State object lives exactly as long as the command.
_actors: weakref.WeakKeyDictionary[object, Actor] = weakref.WeakKeyDictionary()


def current_actor(state: _HasSession) -> Actor:
    """Who runs this command (authenticated once per invocation)."""
    actor = _actors.get(state)
    if actor is None:
        with state.session() as s:
            actor = authenticate(s)
        _actors[state] = actor
    return actor


def check(actor: Actor, permission: Permission, hamlets: Collection[str] | None) -> str | None:
    """Why ``actor`` may not use ``permission`` on ``hamlets`` (None: commune-wide), or None."""
    if permission not in actor.permissions:
        holders = ", ".join(r.value for r, ps in ROLE_PERMISSIONS.items() if permission in ps)
        return (
            f"{actor.name} ({actor.role}) lacks permission '{permission.value}' "
            f"(held by: {holders or 'nobody'})"
        )
    if actor.role == Role.HAMLET_HEAD and permission in HAMLET_SCOPED:
        if hamlets is None:
            return (
                f"{actor.name} (hamlet-head) lacks permission '{permission.value}' for the "
                f"whole commune: hamlet heads act for their own hamlet ({actor.hamlet}) only"
            )
        others = sorted(set(hamlets) - {actor.hamlet})
        if others:
            return (
                f"{actor.name} (hamlet-head of {actor.hamlet}) lacks permission "
                f"'{permission.value}' for hamlet {', '.join(others)}"
            )
    return None


def authorize(
    ctx: _HasSession,
    actor: Actor,
    permission: Permission,
    hamlet: str | Iterable[str] | None = None,
    *,
    action: str | None = None,
    target: str = "",
) -> None:
    """Return if ``actor`` holds ``permission``; else audit the refusal and raise.

    ``hamlet`` is the hamlet (or hamlets) the action reaches, None for commune-wide or
    not hamlet-specific; it matters for hamlet heads' broadcast and emergency rights.
    Every service calls this (and only this) before it acts, whatever the face.
    """
    hamlets = {hamlet} if isinstance(hamlet, str) else (set(hamlet) if hamlet else None)
    why = check(actor, permission, hamlets)
    if why is None:
        return
    with ctx.session() as s:
        audit.record(
            s,
            actor.name,
            action or permission.value,
            target,
            audit.Outcome.DENIED,
            {"missing": permission.value, "hamlets": sorted(hamlets or [])},
            role=actor.role,
            commit=True,
        )
    raise PermissionDenied(f"refused: {why}")


def require(
    state: _HasSession,
    permission: Permission,
    hamlet: str | Iterable[str] | None = None,
    *,
    action: str | None = None,
    target: str = "",
) -> Actor:
    """The CLI's caller (from its token) if they hold ``permission``; see :func:`authorize`."""
    actor = current_actor(state)
    authorize(state, actor, permission, hamlet, action=action, target=target)
    return actor


def hamlets_of(clusters: Iterable[ClusterRecord]) -> set[str]:
    """The hamlets a set of clusters belongs to (for :func:`require`)."""
    return {c.hamlet_id for c in clusters}
