"""Simulated clusters (``loudspeaker simulate``): which of the stored site's, on which broker."""

from __future__ import annotations

from loudspeaker import simulation
from loudspeaker.services.context import ServiceContext
from loudspeaker.site import current_site

SimulationOptions = simulation.SimulationOptions


def plan(ctx: ServiceContext, options: SimulationOptions) -> simulation.Simulation:
    """Plan the stored site's clusters as agents, on the running controller's broker."""
    with ctx.session() as s:
        site = current_site(s)
    return simulation.plan(site, ctx.controller(), options)
