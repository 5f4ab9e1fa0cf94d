"""``loudspeaker emergency``: trigger, stop and follow emergency broadcasts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer
from rich.table import Table

from firmware_bridge.exceptions import KeyFileError
from firmware_bridge.mqtt import BrokerEndpoint
from loudspeaker import audit
from loudspeaker import emergency as em
from loudspeaker.auth import Permission, require
from loudspeaker.broker import running_broker
from loudspeaker.brokerconf import OPERATOR_USER
from loudspeaker.commands.broadcast import status_table, wait_for
from loudspeaker.commands.common import (
    State,
    console,
    err_console,
    handle_errors,
    print_json,
    state_of,
)
from loudspeaker.config import ENV_OPERATOR_CREDENTIALS
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.keys import CommandSigner
from loudspeaker.runtime import (
    ControllersAccountRefused,
    Endpoints,
    operators_broker,
    operators_credentials,
    remembered_port,
)


def _actor(state: State) -> str:
    from loudspeaker.auth import current_actor

    return current_actor(state).name


def _broker_for_direct(state: State) -> tuple[BrokerEndpoint, str, int]:
    """Broker endpoint and media address to use while the controller is down.

    The broker: ``LOUDSPEAKER_BROKER``, else the one the last ``serve`` wrote to
    ``run/endpoints.json``, else the private broker if it runs. The login: the operators'
    account (``_operator.json``: ``LOUDSPEAKER_OPERATOR_CREDENTIALS``, else the file named
    in ``run/endpoints.json``), never the controller's, whose session it would take over.
    """
    st = state.settings
    last = Endpoints.read(st.endpoints_file)
    url = st.broker_url or (last.broker_url if last else None)
    creds = operators_credentials(st, last)
    if creds is None and last is not None and last.credentials_file and not st.broker_url:
        # serve logged in to a locked-down broker, but named no operators' account.
        raise LoudspeakerError(
            f"the controller is not running and no operators' broker credentials are known "
            f"(run/endpoints.json names none): set {ENV_OPERATOR_CREDENTIALS} to "
            f"{OPERATOR_USER}.json from `loudspeaker broker config` (re-run it to write one; it "
            "keeps every password), or start `loudspeaker serve` with that file beside the "
            "controller's. The emergency is recorded and goes out as soon as serve starts"
        )
    try:
        endpoint = operators_broker(url, creds).endpoint or running_broker(st.run_dir / "mosquitto")
    except KeyFileError as exc:
        raise LoudspeakerError(
            f"the controller is not running and the operators' broker credentials cannot be "
            f"used: {exc}. Run this as a member of the operators' group (the file is 0640), or "
            f"set {ENV_OPERATOR_CREDENTIALS} to a copy of {OPERATOR_USER}.json you may read. "
            "The emergency is recorded and goes out as soon as `loudspeaker serve` starts"
        ) from None
    except ControllersAccountRefused as exc:
        raise LoudspeakerError(
            f"{exc} ({ENV_OPERATOR_CREDENTIALS}). The emergency is recorded and goes out as "
            "soon as `loudspeaker serve` starts"
        ) from None
    if endpoint is None:
        raise LoudspeakerError(
            "the controller is not running and no broker is reachable: the emergency is "
            "recorded and goes out as soon as `loudspeaker serve` starts"
        )
    # The controller's own media address, so URLs in queued commands stay valid.
    host, port = st.http_host, st.http_port or remembered_port(st.run_dir, "media")
    if last is not None and not st.http_port:
        parsed = urlparse(last.media)
        host, port = parsed.hostname or host, parsed.port or port
    return endpoint, host, port


@handle_errors
def emergency(
    ctx: typer.Context,
    text: Annotated[
        str,
        typer.Argument(
            help="What the emergency is (spoken by TTS unless --recording/--siren); "
            "or `stop [ID]`, or `status ID`",
            metavar="TEXT",
        ),
    ],
    emergency_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="With stop/status")
    ] = None,
    hamlet: Annotated[
        list[str] | None, typer.Option("--hamlet", help="Hamlet name or id (repeat for several)")
    ] = None,
    all_hamlets: Annotated[bool, typer.Option("--all", help="Every hamlet of the commune")] = False,
    recording: Annotated[
        Path | None, typer.Option(help="Play this recording instead of TTS")
    ] = None,
    siren: Annotated[bool, typer.Option("--siren", help="Play the alert siren")] = False,
    announcement: Annotated[
        str | None, typer.Option(help="Play a prepared announcement (no rendering: fastest)")
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, max=10, help="Times to play (1-10)")] = 1,
    gap: Annotated[float, typer.Option(min=0, max=7200, help="Seconds between repeats")] = 0.0,
    valid: Annotated[
        float, typer.Option(help="Seconds a cluster offline now still gets it when back")
    ] = em.DEFAULT_VALIDITY_S,
    engine: Annotated[str, typer.Option(help="TTS engine (offline is fastest)")] = "offline",
    wait: Annotated[float, typer.Option(help="Seconds to follow the acknowledgements")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Emergency broadcast: plays at once on the target hamlets' clusters, pre-empting all."""
    state = state_of(ctx)
    if text in ("status", "stop"):
        require(
            state,
            Permission.VIEW if text == "status" else Permission.EMERGENCY,
            action=f"emergency.{text}",
            target=emergency_id or "all",
        )
    if text == "status":
        if not emergency_id:
            _list_active(state, as_json)
            return
        with state.session() as s:
            view = em.status(s, emergency_id)
        _show(state, view, as_json)
        return
    if text == "stop":
        with state.session() as s:
            stopped = em.request_stop(s, emergency_id, _actor(state))
            ids = [b.id for b in stopped]
            audit.record(s, _actor(state), "emergency.stop", ",".join(ids), commit=True)
        card = state.controller()
        if card is not None:
            card.poke()
        else:
            err_console.print(
                "[yellow]warning:[/] the controller is not running; the stop takes effect when "
                "it starts"
            )
        if as_json:
            print_json({"stopped": ids})
        else:
            console.print(f"Stop requested for {', '.join(ids)}.")
        return
    if emergency_id is not None:
        raise LoudspeakerError("give the emergency text as one quoted argument")
    if bool(hamlet) == all_hamlets:
        raise LoudspeakerError("say where: --hamlet NAME (repeatable) or --all")
    with state.session() as s:
        hamlets = {c.hamlet_id for c in em.target_clusters(s, tuple(hamlet or ()))}
    actor = require(
        state,
        Permission.EMERGENCY,
        None if all_hamlets else hamlets,
        action="emergency.trigger",
        target="all" if all_hamlets else ",".join(sorted(hamlets)),
    )
    req = em.EmergencyRequest(
        text=text,
        hamlets=tuple(hamlet or ()),
        recording=recording,
        siren=siren,
        announcement=announcement,
        repeat=repeat,
        gap_s=gap,
        validity_s=valid,
        engine=engine,
        actor=actor.name,
    )
    with state.session() as s:
        b = em.trigger(s, state.settings.data_dir, req)
        bid = b.id
        audit.record(
            s,
            actor.name,
            "emergency.trigger",
            req.target,
            detail={"broadcast": bid, "text": text[:200], "siren": siren},
            role=actor.role,
            commit=True,
        )
    card = state.controller()
    direct = None
    if card is not None:
        card.poke()
    else:
        endpoint, host, port = _broker_for_direct(state)
        from loudspeaker.site import current_site

        with state.session() as s:
            site_id = current_site(s).site.id
            direct = em.send_direct(
                s,
                bid,
                endpoint=endpoint,
                site=site_id,
                media_dir=state.settings.media_dir,
                http_host=host,
                http_port=port,
                sign=CommandSigner(state.engine, state.keystore).sign,
                wait_s=wait,
                public_url=state.settings.public_url,
            )
        err_console.print(
            f"[yellow]controller not running:[/] sent directly over the broker to "
            f"{len(direct.sent)} clusters; the controller records their answers when it starts"
        )
        for cluster, why in direct.failed.items():
            err_console.print(f"[red]{cluster}: NOT sent[/] ({why})", highlight=False)
        for cluster, why in sorted(direct.unsigned.items()):
            err_console.print(
                f"[bold red]NOT SENT to {cluster}:[/] its key could not be opened: {why}",
                highlight=False,
                soft_wrap=True,
            )
    if not as_json:
        console.print(f"[bold red]EMERGENCY {bid}[/] triggered for {req.target}.")
    if card is not None and wait > 0:
        wait_for(state, bid, wait, live=not as_json, until="playing")
    with state.session() as s:
        view = em.status(s, bid)
    if as_json:
        data = view.to_json()
        if direct is not None:
            data["direct"] = {
                "sent": direct.sent,
                "failed": direct.failed,
                "acks": direct.acks,
                "not_signed": direct.unsigned,
            }
        print_json(data)
    elif card is not None:
        _show(state, view, as_json=False)
    elif direct is not None:
        for cluster in direct.sent:
            console.print(f"  {cluster}: {direct.acks.get(cluster, 'no answer yet')}")
    if direct is not None and (direct.unsigned or direct.failed):
        missed = sorted({*direct.unsigned, *direct.failed})
        err_console.print(
            f"[bold red]error:[/] {len(missed)} clusters got nothing: {', '.join(missed)} "
            "(see above)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _show(state: State, view: em.EmergencyView, as_json: bool) -> None:
    if as_json:
        print_json(view.to_json())
        return
    console.print(status_table(view.view, state.zone()))
    b = view.view.broadcast
    if b.stopped_at:
        console.print(f"Stopped by {b.stopped_by or '?'}.")
    for miss in view.not_played:
        console.print(
            f"[red]{miss['cluster']}[/] ({miss['hamlet']}): {miss['why']}", highlight=False
        )


def _list_active(state: State, as_json: bool) -> None:
    with state.session() as s:
        rows = [em.status(s, b.id) for b in em.active(s)]
    if as_json:
        print_json([v.to_json() for v in rows])
        return
    if not rows:
        console.print("No emergency is active.")
        return
    table = Table("id", "target", "title", "states")
    for v in rows:
        b = v.view.broadcast
        states = ", ".join(f"{k} {n}" for k, n in sorted(v.view.counts.items()))
        table.add_row(b.id, b.target, b.title, states)
    console.print(table)
