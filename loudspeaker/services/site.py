"""The site: load a site file (hamlets and clusters) and show what is stored."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import select

from loudspeaker import audit
from loudspeaker.auth import Actor, Permission, authorize
from loudspeaker.models import ClusterStatus
from loudspeaker.services.context import ServiceContext
from loudspeaker.site import SiteFile, current_site, load_site_file, store_site


@dataclass(frozen=True)
class SiteLoaded:
    """The site file now stored (it replaced the stored hamlets and clusters)."""

    site: SiteFile
    controller_notified: bool


@dataclass(frozen=True)
class SiteView:
    """The stored site and whether each cluster is online (absent: never heard of)."""

    site: SiteFile
    online: dict[str, bool]


def load(ctx: ServiceContext, actor: Actor, file: Path) -> SiteLoaded:
    """Validate a site file and store it; ``SiteError`` names the field and line."""
    authorize(ctx, actor, Permission.SITE, action="site.load", target=str(file))
    site = load_site_file(file)
    with ctx.session() as s:
        store_site(s, site)
        audit.record(
            s,
            actor.name,
            "site.load",
            site.site.id,
            detail={
                "file": str(file),
                "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                "hamlets": len(site.hamlets),
                "clusters": len(site.clusters),
            },
            role=actor.role,
            commit=True,
        )
    return SiteLoaded(site, ctx.notify_controller())


def show(ctx: ServiceContext, actor: Actor) -> SiteView:
    """The stored site; ``SiteError`` when none is loaded."""
    authorize(ctx, actor, Permission.VIEW, action="site.show")
    with ctx.session() as s:
        site = current_site(s)
        online = {st.cluster_id: st.online for st in s.exec(select(ClusterStatus)).all()}
    return SiteView(site, online)
