"""``loudspeaker broker config``: files for a locked-down production mosquitto (admins)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loudspeaker.commands.common import JsonOpt, State, command, console, print_json
from loudspeaker.services import broker
from loudspeaker.services.broker import BrokerSetup

app = typer.Typer(help="The production MQTT broker (mosquitto).")


@command(app, "config")
def broker_config(
    state: State,
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to write into")],
    host: Annotated[
        str, typer.Option(help="Name or address the clusters use to reach the broker")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Plain listener (the controller, loopback)")] = 1883,
    bind: Annotated[str, typer.Option(help="Address of the plain listener")] = "127.0.0.1",
    tls_port: Annotated[int, typer.Option(help="TLS listener for the clusters")] = 8883,
    tls_bind: Annotated[str, typer.Option(help="Address of the TLS listener")] = "0.0.0.0",
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM)")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA certificate the boxes trust")] = None,
    tls_self_signed: Annotated[
        bool,
        typer.Option(
            "--tls-self-signed",
            help="Make a private CA (or reuse the one in DIR/tls) and a server cert",
        ),
    ] = False,
    no_tls: Annotated[
        bool,
        typer.Option(
            "--no-tls",
            help="Drop the TLS listener an earlier run set up (boxes then use plain mqtt://)",
        ),
    ] = False,
    max_connections: Annotated[
        int | None,
        typer.Option(help="Connections per listener (default: 2 per account + 64)", min=1),
    ] = None,
    run_as: Annotated[
        str | None, typer.Option(help="User mosquitto drops to (must read these files)")
    ] = None,
    persistence_dir: Annotated[Path | None, typer.Option(help="mosquitto persistence")] = None,
    rotate: Annotated[
        list[str] | None, typer.Option(help="New password for this cluster (repeatable)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write mosquitto.conf, password file, ACL and per-box credentials into a directory."""
    setup = BrokerSetup(
        output,
        host=host,
        port=port,
        bind=bind,
        tls_port=tls_port,
        tls_bind=tls_bind,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        tls_self_signed=tls_self_signed,
        no_tls=no_tls,
        max_connections=max_connections,
        run_as=run_as,
        persistence_dir=persistence_dir,
        rotate=frozenset(rotate or ()),
    )
    done = broker.write_config(state, state.actor(), setup)
    files = done.files
    if as_json:
        print_json(done.to_json())
        return
    console.print(f"Wrote {files.conf}, {files.passwd} (0600) and {files.acl}.")
    if files.tls_source == "kept":
        console.print(
            f"Kept the TLS listener of the earlier run ({files.conf.parent / 'tls'}): boxes "
            f"stay on {files.cluster_url}. To drop TLS, run again with --no-tls."
        )
    if done.operators_group_kept is not None:
        shared = f"0640, group {done.operators_group_kept} kept from the earlier run"
    else:
        shared = "0640, the operators' group" if done.operators_group_shared else "0600"
    console.print(
        f"The operators' tools (controller-down emergency, `loudspeaker conformance`) log "
        f"in with {done.operator_credentials} ({shared}); `serve` finds it beside the "
        "controller's."
    )
    console.print(
        f"Per-box credentials (0600) in {files.conf.parent / 'credentials'}: copy NAME.json"
        f"{' and ca.crt' if files.tls else ''} to each box and run `loudspeaker-agent "
        "--broker-credentials NAME.json ...`. Run the broker with "
        f"`mosquitto -c {files.conf}`."
    )
