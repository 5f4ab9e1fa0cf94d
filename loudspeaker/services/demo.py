"""The demo (``loudspeaker demo``): a scratch installation, and the bulletin it sends."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from loudspeaker import demo as rig
from loudspeaker.auth import BOOTSTRAP_ROLE, Actor
from loudspeaker.config import Settings
from loudspeaker.services import broadcasts
from loudspeaker.services.broadcasts import BroadcastRequest, BroadcastSent
from loudspeaker.services.context import ServiceContext
from loudspeaker.site import SiteFile, load_site_file, store_site

# The demo acts as itself on its own scratch database, where nobody is a user.
DEMO_ACTOR = Actor(name="demo", role=BOOTSTRAP_ROLE, bootstrap=True)


def scratch(settings: Settings, demo_dir: Path) -> Settings:
    """Settings of a fresh installation in ``demo_dir`` (wiped: only ever the demo's own)."""
    rig.fresh_dir(demo_dir)
    return replace(settings, data_dir=demo_dir.resolve(), db_url=None)


def load_site(ctx: ServiceContext, site_file: Path) -> SiteFile:
    """Store ``site_file`` in the scratch installation (nobody to authorize there)."""
    site = load_site_file(site_file)
    with ctx.session() as s:
        store_site(s, site)
    return site


def send_bulletin(ctx: ServiceContext) -> BroadcastSent:
    """Queue the demo's Vietnamese bulletin, rendered offline, for every cluster."""
    request = BroadcastRequest(rig.DEMO_TEXT, "all", rig.DEMO_TITLE, engine="offline")
    return broadcasts.send(ctx, DEMO_ACTOR, request)
