"""Users and roles: add, remove, change a role, issue a new token, list (admins only).

A new token exists in clear only in the file these services write (mode 0600, never
overwritten); the database keeps its SHA-256. The last admin can be neither removed nor
demoted, and while there are no users the first one must be an admin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlmodel import Session, col, func, select

from firmware_bridge.keys import write_private
from loudspeaker import audit
from loudspeaker.auth import (
    Actor,
    Permission,
    Role,
    authorize,
    default_token_path,
    hash_token,
    new_token,
    user_count,
)
from loudspeaker.exceptions import InvalidRequest, NotFoundError
from loudspeaker.models import HamletRecord, UserRecord, now
from loudspeaker.services.context import ServiceContext

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")


@dataclass(frozen=True)
class UserView:
    """One user as the ``users list`` shows it (never the token)."""

    name: str
    role: str
    hamlet: str | None
    created_at: datetime
    created_by: str

    def to_json(self) -> dict[str, str | None]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "role": self.role,
            "hamlet": self.hamlet,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


class _Named(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def hamlet(self) -> str | None: ...


def identity(who: _Named) -> dict[str, str | None]:
    """Name, role and hamlet of a user or actor, JSON-ready."""
    return {"name": who.name, "role": who.role, "hamlet": who.hamlet}


@dataclass(frozen=True)
class TokenIssued:
    """A user was added (or given a new token); the token is in ``token_file`` only."""

    name: str
    role: str
    hamlet: str | None
    token_file: Path
    # The first admin was added by the bootstrap operator: authentication is on from now.
    ended_bootstrap: bool = False

    def to_json(self) -> dict[str, str | None]:
        """JSON-ready form (without the token)."""
        return {**identity(self), "token_file": str(self.token_file)}


@dataclass(frozen=True)
class RoleChanged:
    """A user's new role (and hamlet)."""

    name: str
    role: str
    hamlet: str | None


def check_role(role: str, hamlet: str | None, session: Session) -> Role:
    """The role named ``role``, with ``hamlet`` required for (and only for) hamlet heads."""
    try:
        r = Role(role)
    except ValueError:
        raise InvalidRequest(
            f"unknown role {role!r}; use one of: {', '.join(x.value for x in Role)}"
        ) from None
    if r is Role.HAMLET_HEAD:
        if not hamlet:
            raise InvalidRequest("a hamlet head needs --hamlet HAMLET_ID")
        if session.get(HamletRecord, hamlet) is None:
            known = ", ".join(h.id for h in session.exec(select(HamletRecord)).all())
            raise NotFoundError(f"no hamlet {hamlet!r}; known: {known or 'none (load a site)'}")
    elif hamlet:
        raise InvalidRequest("--hamlet is only for hamlet heads")
    return r


def _admins(session: Session) -> int:
    q = select(func.count()).select_from(UserRecord).where(UserRecord.role == Role.ADMIN.value)
    return int(session.exec(q).one())


def _get(session: Session, name: str) -> UserRecord:
    user = session.get(UserRecord, name)
    if user is None:
        raise NotFoundError(f"no user {name!r} (see `loudspeaker users list`)")
    return user


def token_path(ctx: ServiceContext, name: str, given: Path | None, bootstrap: bool) -> Path:
    """Where a user's new token goes: ``given``, else the keyboard's own token file for
    the first admin, else ``DATA_DIR/tokens/NAME.token``."""
    if given is not None:
        return given.expanduser()
    # The first admin is usually the person at this keyboard: log them in straight away.
    if bootstrap and not default_token_path().exists():
        return default_token_path()
    return ctx.settings.data_dir / "tokens" / f"{name}.token"


def write_token_file(path: Path, token: str) -> None:
    """Write a token to a new file, mode 0600; an existing file is never overwritten."""
    if path.exists():
        raise InvalidRequest(f"{path} exists; choose another --token-file or remove it first")
    write_private(path, (token + "\n").encode())


def add(
    ctx: ServiceContext,
    actor: Actor,
    name: str,
    role: str,
    hamlet: str | None = None,
    token_file: Path | None = None,
) -> TokenIssued:
    """Create a user and write their token to ``token_file`` (see :func:`token_path`)."""
    authorize(ctx, actor, Permission.USERS, action="users.add", target=name)
    if not _NAME_RE.match(name):
        raise InvalidRequest(
            f"user name {name!r}: use 1-32 lowercase letters, digits, '.', '_' or '-'"
        )
    with ctx.session() as s:
        r = check_role(role, hamlet, s)
        if user_count(s) == 0 and r is not Role.ADMIN:
            raise InvalidRequest(
                "the first user must be an admin (--role admin), or nobody could manage users"
            )
        if s.get(UserRecord, name) is not None:
            raise InvalidRequest(
                f"user {name!r} exists; use `users set-role` or `users reset-token`"
            )
        token = new_token()
        s.add(
            UserRecord(
                name=name,
                role=r.value,
                hamlet_id=hamlet,
                token_sha256=hash_token(token),
                created_at=now(),
                created_by=actor.name,
            )
        )
        detail = {"role": r.value, "hamlet": hamlet}
        audit.record(s, actor.name, "users.add", name, detail=detail, role=actor.role)
        path = token_path(ctx, name, token_file, actor.bootstrap)
        write_token_file(path, token)
        s.commit()
    return TokenIssued(name, r.value, hamlet, path, ended_bootstrap=actor.bootstrap)


def remove(ctx: ServiceContext, actor: Actor, name: str) -> None:
    """Delete a user (their token stops working at once); the last admin stays."""
    authorize(ctx, actor, Permission.USERS, action="users.remove", target=name)
    with ctx.session() as s:
        user = _get(s, name)
        if user.role == Role.ADMIN.value and _admins(s) == 1:
            raise InvalidRequest("cannot remove the last admin: add another admin first")
        s.delete(user)
        detail = {"role": user.role}
        audit.record(s, actor.name, "users.remove", name, detail=detail, role=actor.role)
        s.commit()


def set_role(
    ctx: ServiceContext, actor: Actor, name: str, role: str, hamlet: str | None = None
) -> RoleChanged:
    """Change a user's role (and hamlet); the last admin cannot be demoted."""
    authorize(ctx, actor, Permission.USERS, action="users.set-role", target=name)
    with ctx.session() as s:
        user = _get(s, name)
        r = check_role(role, hamlet, s)
        if user.role == Role.ADMIN.value and r is not Role.ADMIN and _admins(s) == 1:
            raise InvalidRequest("cannot demote the last admin: add another admin first")
        old = (user.role, user.hamlet_id)
        user.role, user.hamlet_id = r.value, hamlet
        s.add(user)
        audit.record(
            s,
            actor.name,
            "users.set-role",
            name,
            detail={"from": old[0], "from_hamlet": old[1], "to": r.value, "hamlet": hamlet},
            role=actor.role,
        )
        s.commit()
    return RoleChanged(name, r.value, hamlet)


def reset_token(
    ctx: ServiceContext, actor: Actor, name: str, token_file: Path | None = None
) -> TokenIssued:
    """Issue a new token for a user; the old one stops working."""
    authorize(ctx, actor, Permission.USERS, action="users.reset-token", target=name)
    with ctx.session() as s:
        user = _get(s, name)
        token = new_token()
        user.token_sha256 = hash_token(token)
        s.add(user)
        audit.record(s, actor.name, "users.reset-token", name, role=actor.role)
        path = token_path(ctx, name, token_file, False)
        write_token_file(path, token)
        s.commit()
    return TokenIssued(name, user.role, user.hamlet_id, path)


def list_users(ctx: ServiceContext, actor: Actor) -> list[UserView]:
    """Every user with role and hamlet, by name."""
    authorize(ctx, actor, Permission.USERS, action="users.list")
    with ctx.session() as s:
        users = s.exec(select(UserRecord).order_by(col(UserRecord.name))).all()
        return [UserView(u.name, u.role, u.hamlet_id, u.created_at, u.created_by) for u in users]
