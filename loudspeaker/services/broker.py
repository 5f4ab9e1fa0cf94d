"""The production broker's files: mosquitto.conf, password file, ACL, per-box credentials.

Needs the ``keys`` permission: the files hold every box's broker password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loudspeaker import audit
from loudspeaker.auth import Actor, Permission, authorize
from loudspeaker.brokerconf import OPERATOR_USER, BrokerFiles, TlsFiles, group_name
from loudspeaker.brokerconf import write_broker_config as write_files
from loudspeaker.exceptions import InvalidRequest
from loudspeaker.filemodes import FileModes
from loudspeaker.services.context import ServiceContext
from loudspeaker.site import current_site


@dataclass(frozen=True)
class BrokerSetup:
    """What to write where (the field names are the ``broker config`` options)."""

    output: Path
    host: str = "127.0.0.1"
    port: int = 1883
    bind: str = "127.0.0.1"
    tls_port: int = 8883
    tls_bind: str = "0.0.0.0"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_self_signed: bool = False
    no_tls: bool = False
    max_connections: int | None = None
    run_as: str | None = None
    persistence_dir: Path | None = None
    rotate: frozenset[str] = field(default_factory=frozenset)  # clusters given new passwords

    def tls_files(self) -> TlsFiles | None:
        """The server's certificate, key and CA, when given (all three or none)."""
        if not (self.tls_cert or self.tls_key or self.tls_ca):
            return None
        if not (self.tls_cert and self.tls_key and self.tls_ca):
            raise InvalidRequest("--tls-cert needs --tls-key and --tls-ca as well")
        return TlsFiles(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca)


@dataclass(frozen=True)
class BrokerConfigWritten:
    """The files written, and who shares the operators' credentials file."""

    files: BrokerFiles
    # The operators' group kept from an earlier run (no LOUDSPEAKER_GROUP this time).
    operators_group_kept: str | None
    # The operators' credentials are 0640 in LOUDSPEAKER_GROUP (else 0600, or kept).
    operators_group_shared: bool

    @property
    def operator_credentials(self) -> Path:
        """The credentials file of the operators' tools."""
        return self.files.credentials[OPERATOR_USER]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        f = self.files
        return {
            "conf": str(f.conf),
            "passwd": str(f.passwd),
            "acl": str(f.acl),
            "cluster_url": f.cluster_url,
            "credentials": {k: str(v) for k, v in f.credentials.items()},
            "operators_group_kept": self.operators_group_kept,
            "tls": None
            if f.tls is None
            else {"cert": str(f.tls.cert), "ca": str(f.tls.ca), "source": f.tls_source},
        }


def write_config(ctx: ServiceContext, actor: Actor, setup: BrokerSetup) -> BrokerConfigWritten:
    """Write the broker's files for every cluster of the stored site into ``setup.output``."""
    authorize(ctx, actor, Permission.KEYS, action="broker.config", target=str(setup.output))
    with ctx.session() as s:
        site = current_site(s)
    # Serial clusters too: the gateway's stand-in for each logs in as that cluster.
    clusters = [c.id for c in site.clusters]
    files = write_files(
        setup.output,
        site=site.site.id,
        clusters=clusters,
        host=setup.host,
        port=setup.port,
        bind=setup.bind,
        tls=setup.tls_files(),
        tls_self_signed=setup.tls_self_signed,
        no_tls=setup.no_tls,
        max_connections=setup.max_connections,
        tls_port=setup.tls_port,
        tls_bind=setup.tls_bind,
        run_as=setup.run_as,
        persistence_dir=setup.persistence_dir,
        rotate=setup.rotate,
        # The operators' group (LOUDSPEAKER_GROUP) may read the operators' credentials.
        operators_gid=FileModes.for_group(ctx.settings.group).gid,
    )
    with ctx.session() as s:
        audit.record(
            s,
            actor.name,
            "broker.config",
            str(setup.output),
            detail={
                "clusters": len(clusters),
                "tls": files.tls_source,
                "rotated": sorted(setup.rotate),
            },
            role=actor.role,
            commit=True,
        )
    kept = files.operators_gid_kept
    return BrokerConfigWritten(
        files, None if kept is None else group_name(kept), bool(ctx.settings.group)
    )
