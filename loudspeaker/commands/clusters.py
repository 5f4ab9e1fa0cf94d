"""``loudspeaker clusters``: what the controller knows of each cluster."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from sqlmodel import select

from loudspeaker.auth import Permission, require
from loudspeaker.commands.common import console, handle_errors, local_time, print_json, state_of
from loudspeaker.models import ClusterRecord, ClusterStatus


@handle_errors
def clusters(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Every cluster: hamlet, online, last seen."""
    state = state_of(ctx)
    require(state, Permission.VIEW, action="clusters.list")
    zone = state.zone()
    with state.session() as s:
        cl = s.exec(select(ClusterRecord).order_by(ClusterRecord.id)).all()
        sts = {x.cluster_id: x for x in s.exec(select(ClusterStatus)).all()}
    rows = []
    for c in cl:
        st = sts.get(c.id)
        rows.append(
            {
                "cluster": c.id,
                "hamlet": c.hamlet_id,
                "transport": c.transport,
                "online": st.online if st else None,
                "since": st.since.isoformat() if st and st.since else None,
                "last_seen": st.last_seen.isoformat() if st and st.last_seen else None,
                "agent": st.agent if st else "",
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table("cluster", "hamlet", "transport", "online", "last seen", "agent")
    for r, c in zip(rows, cl, strict=True):
        st = sts.get(c.id)
        online = "-" if r["online"] is None else ("yes" if r["online"] else "[red]no[/]")
        table.add_row(
            c.id,
            c.hamlet_id,
            c.transport,
            online,
            local_time(st.last_seen if st else None, zone),
            st.agent if st else "",
        )
    console.print(table)
