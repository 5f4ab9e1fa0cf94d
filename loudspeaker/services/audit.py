"""Reading and verifying the tamper-evident audit log (admins)."""

from __future__ import annotations

from loudspeaker import audit as audit_log
from loudspeaker.audit import Verification
from loudspeaker.auth import Actor, Permission, authorize
from loudspeaker.exceptions import InvalidRequest
from loudspeaker.models import AuditEntry
from loudspeaker.services.context import ServiceContext


def entries(
    ctx: ServiceContext,
    actor: Actor,
    *,
    limit: int = 50,
    by: str | None = None,
    action: str | None = None,
) -> list[AuditEntry]:
    """The newest ``limit`` rows, newest first; ``by`` one user, ``action`` a prefix."""
    authorize(ctx, actor, Permission.AUDIT, action="audit.read")
    with ctx.session() as s:
        return audit_log.entries(s, limit=limit, actor=by, action=action)


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` as ``audit verify`` prints it."""
    seq, _, h = text.partition(":")
    if not seq.isdigit() or len(h) != 64:
        raise InvalidRequest("--head takes SEQ:HASH as `audit verify` printed it")
    return int(seq), h


def verify(ctx: ServiceContext, actor: Actor, head: str | None = None) -> Verification:
    """Recompute the hash chain (and check the ``SEQ:HASH`` written down earlier)."""
    authorize(ctx, actor, Permission.AUDIT, action="audit.verify")
    expect = parse_head(head) if head else None
    with ctx.session() as s:
        return audit_log.verify(s, expect_head=expect)
