"""``loudspeaker broker config``: files for a locked-down production mosquitto (admins)."""

from __future__ import annotations

import grp
from pathlib import Path
from typing import Annotated

import typer

from loudspeaker import audit
from loudspeaker.auth import Permission, require
from loudspeaker.brokerconf import OPERATOR_USER, TlsFiles, write_broker_config
from loudspeaker.commands.common import console, handle_errors, print_json, state_of
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.filemodes import FileModes
from loudspeaker.site import current_site


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


app = typer.Typer(help="The production MQTT broker (mosquitto).")


@app.command("config")
@handle_errors
def broker_config(
    ctx: typer.Context,
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Write mosquitto.conf, password file, ACL and per-box credentials into a directory."""
    state = state_of(ctx)
    actor = require(state, Permission.KEYS, action="broker.config", target=str(output))
    with state.session() as s:
        site = current_site(s)
    # Serial clusters too: the gateway's stand-in for each logs in as that cluster.
    clusters = [c.id for c in site.clusters]
    tls: TlsFiles | None = None
    if tls_cert or tls_key or tls_ca:
        if not (tls_cert and tls_key and tls_ca):
            raise LoudspeakerError("--tls-cert needs --tls-key and --tls-ca as well")
        tls = TlsFiles(cert=tls_cert, key=tls_key, ca=tls_ca)
    files = write_broker_config(
        output,
        site=site.site.id,
        clusters=clusters,
        host=host,
        port=port,
        bind=bind,
        tls=tls,
        tls_self_signed=tls_self_signed,
        no_tls=no_tls,
        max_connections=max_connections,
        tls_port=tls_port,
        tls_bind=tls_bind,
        run_as=run_as,
        persistence_dir=persistence_dir,
        rotate=frozenset(rotate or []),
        # The operators' group (LOUDSPEAKER_GROUP) may read the operators' credentials.
        operators_gid=FileModes.for_group(state.settings.group).gid,
    )
    with state.session() as s:
        audit.record(
            s,
            actor.name,
            "broker.config",
            str(output),
            detail={
                "clusters": len(clusters),
                "tls": files.tls_source,
                "rotated": sorted(rotate or []),
            },
            role=actor.role,
            commit=True,
        )
    out = {
        "conf": str(files.conf),
        "passwd": str(files.passwd),
        "acl": str(files.acl),
        "cluster_url": files.cluster_url,
        "credentials": {k: str(v) for k, v in files.credentials.items()},
        "operators_group_kept": None
        if files.operators_gid_kept is None
        else group_name(files.operators_gid_kept),
        "tls": None
        if files.tls is None
        else {"cert": str(files.tls.cert), "ca": str(files.tls.ca), "source": files.tls_source},
    }
    if as_json:
        print_json(out)
        return
    console.print(f"Wrote {files.conf}, {files.passwd} (0600) and {files.acl}.")
    if files.tls_source == "kept":
        console.print(
            f"Kept the TLS listener of the earlier run ({files.conf.parent / 'tls'}): boxes "
            f"stay on {files.cluster_url}. To drop TLS, run again with --no-tls."
        )
    op = files.credentials[OPERATOR_USER]
    if files.operators_gid_kept is not None:
        shared = f"0640, group {group_name(files.operators_gid_kept)} kept from the earlier run"
    else:
        shared = "0640, the operators' group" if state.settings.group else "0600"
    console.print(
        f"The operators' tools (controller-down emergency, `loudspeaker conformance`) log "
        f"in with {op} ({shared}); `serve` finds it beside the controller's."
    )
    console.print(
        f"Per-box credentials (0600) in {files.conf.parent / 'credentials'}: copy NAME.json"
        f"{' and ca.crt' if files.tls else ''} to each box and run `loudspeaker-agent "
        "--broker-credentials NAME.json ...`. Run the broker with "
        f"`mosquitto -c {files.conf}`."
    )
