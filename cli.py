"""``loudspeaker``: the command line of the commune's broadcast controller.

A thin Typer face: each area's commands live in ``loudspeaker/commands/``. Commands
validate input, write to the database and poke the running controller
(``loudspeaker serve``), which is the only process that dispatches or schedules.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

try:
    import typer

    from loudspeaker.commands import (
        announce,
        broadcast,
        clusters,
        conformance,
        demo,
        emergency,
        health,
        reports,
        schedule,
        serve,
        simulate,
        site,
    )
    from loudspeaker.commands import audit as audit_cmd
    from loudspeaker.commands import broker as broker_cmd
    from loudspeaker.commands import keys as keys_cmd
    from loudspeaker.commands import users as users_cmd
    from loudspeaker.commands.common import State
    from loudspeaker.config import Settings
except ModuleNotFoundError as exc:
    # A receiver box installs only the agent's packages (`pip install .`); this command is
    # the controller's and needs the `controller` extra. A module of ours missing is a bug.
    if (exc.name or "").partition(".")[0] in ("loudspeaker", "schedules", "audio"):
        raise
    raise SystemExit(
        f"loudspeaker: the Python package {exc.name!r} is missing. This is the controller's "
        "command: install the controller with `pip install '.[controller]'`; on a receiver "
        "box use `loudspeaker-agent` or `loudspeaker-gateway`."
    ) from None

app = typer.Typer(
    name="loudspeaker",
    help="Broadcast controller for a commune's smart public-address system.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
site_app = typer.Typer(help="The commune's hamlets and clusters (a TOML site file).")
site_app.command("load")(site.site_load)
site_app.command("show")(site.site_show)
site_app.command("generate")(site.site_generate)
app.add_typer(site_app, name="site")

app.add_typer(announce.announce_app, name="announce")
app.command()(serve.serve)
app.command()(broadcast.broadcast)
app.command()(simulate.simulate)
app.command()(demo.demo)
app.command()(conformance.conformance)
app.command()(clusters.clusters)
app.command()(emergency.emergency)
app.command("log")(reports.log)
app.add_typer(reports.report_app, name="report")
app.add_typer(schedule.schedule_app, name="schedule")


app.add_typer(users_cmd.app, name="users")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(broker_cmd.app, name="broker")


app.command()(health.alarms)
app.command()(health.diagnose)
app.add_typer(health.cluster_app, name="cluster")


@app.callback()
def _main(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where the database, media and runtime files live "
            "[env LOUDSPEAKER_HOME; default ~/.local/share/loudspeaker]",
        ),
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option("--db-url", help="SQLAlchemy URL [env LOUDSPEAKER_DB_URL; default SQLite]"),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    ] = "WARNING",
) -> None:
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = State(Settings.from_env(data_dir, db_url=db_url))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
