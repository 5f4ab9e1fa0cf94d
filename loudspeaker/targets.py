"""``--to`` targets: ``all``, ``hamlet:NAME``, ``cluster:ID``, comma-separated."""

from __future__ import annotations

from sqlmodel import Session, select

from loudspeaker.exceptions import TargetError
from loudspeaker.models import ClusterRecord, HamletRecord

TARGET_HELP = "all | hamlet:NAME-OR-ID | cluster:ID (comma-separate several)"


def resolve_targets(session: Session, spec: str) -> list[ClusterRecord]:
    """The clusters a target spec names, in id order; ``TargetError`` if none or unknown."""
    clusters = {c.id: c for c in session.exec(select(ClusterRecord)).all()}
    hamlets = session.exec(select(HamletRecord)).all()
    if not clusters:
        raise TargetError("the site has no clusters: load a site file first")
    chosen: dict[str, ClusterRecord] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == "all":
            chosen.update(clusters)
            continue
        kind, _, ref = part.partition(":")
        if kind == "cluster" and ref:
            if ref not in clusters:
                raise TargetError(f"no cluster {ref!r}; known: {', '.join(sorted(clusters))}")
            chosen[ref] = clusters[ref]
        elif kind == "hamlet" and ref:
            match = [h for h in hamlets if ref == h.id or ref.casefold() == h.name.casefold()]
            if not match:
                names = ", ".join(f"{h.id} ({h.name})" for h in hamlets)
                raise TargetError(f"no hamlet {ref!r}; known: {names}")
            members = [c for c in clusters.values() if c.hamlet_id == match[0].id]
            if not members:
                raise TargetError(f"hamlet {ref!r} has no clusters")
            chosen.update((c.id, c) for c in members)
        else:
            raise TargetError(f"target {part!r} is not one of: {TARGET_HELP}")
    if not chosen:
        raise TargetError(f"no target given; use {TARGET_HELP}")
    return [chosen[k] for k in sorted(chosen)]
