"""Which clusters a request reaches: the one place targets and hamlets are looked up.

``--to`` targets are ``all``, ``hamlet:NAME``, ``cluster:ID``, comma-separated; an
emergency names hamlets (ids or names), or none for every hamlet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlmodel import Session, col, select

from loudspeaker.exceptions import TargetError
from loudspeaker.models import ClusterRecord, HamletRecord

TARGET_HELP = "all | hamlet:NAME-OR-ID | cluster:ID (comma-separate several)"


def find_hamlet(hamlets: Sequence[HamletRecord], ref: str) -> HamletRecord:
    """The hamlet ``ref`` names by id or (case-insensitively) by name; ``TargetError`` if none."""
    for h in hamlets:
        if ref == h.id or ref.casefold() == h.name.casefold():
            return h
    names = ", ".join(f"{h.id} ({h.name})" for h in hamlets)
    raise TargetError(f"no hamlet {ref!r}; known: {names}")


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
            hamlet = find_hamlet(hamlets, ref)
            members = [c for c in clusters.values() if c.hamlet_id == hamlet.id]
            if not members:
                raise TargetError(f"hamlet {ref!r} has no clusters")
            chosen.update((c.id, c) for c in members)
        else:
            raise TargetError(f"target {part!r} is not one of: {TARGET_HELP}")
    if not chosen:
        raise TargetError(f"no target given; use {TARGET_HELP}")
    return [chosen[k] for k in sorted(chosen)]


def hamlet_clusters(session: Session, refs: Iterable[str]) -> list[ClusterRecord]:
    """The clusters of the named hamlets (ids or names), or of every hamlet if none is named.

    Unlike a ``--to`` target, one named hamlet without clusters is no error as long as
    another has some: an emergency goes out to every cluster it can reach.
    """
    known = session.exec(select(HamletRecord)).all()
    chosen = sorted({find_hamlet(known, ref).id for ref in refs})
    query = select(ClusterRecord).order_by(col(ClusterRecord.id))
    if chosen:
        query = query.where(col(ClusterRecord.hamlet_id).in_(chosen))
    clusters = list(session.exec(query).all())
    if not clusters:
        raise TargetError("no clusters in the chosen hamlets")
    return clusters
