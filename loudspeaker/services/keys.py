"""The clusters' command-signing keys: issue, rotate, export, activate, list, reset (admins).

The key rules themselves (one active key, one waiting, retired keys kept a day in the
box's file) live in :mod:`loudspeaker.keys`; these services add who may, the key file's
place and the notice to the running controller, which signs with the active key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loudspeaker import keys as cluster_keys
from loudspeaker.auth import Actor, Permission, authorize
from loudspeaker.exceptions import InvalidRequest
from loudspeaker.keys import KeyInfo
from loudspeaker.services.context import ServiceContext
from loudspeaker.site import current_site

KeyFileAction = Literal["issue", "rotate", "export"]


@dataclass(frozen=True)
class KeyFileWritten:
    """The box's key file was written (after a new key, for ``issue`` and ``rotate``)."""

    cluster: str
    action: KeyFileAction
    path: Path
    kids: tuple[str, ...]


@dataclass(frozen=True)
class KeyActivated:
    """The controller signs the cluster's commands with ``kid`` from now on."""

    cluster: str
    kid: str
    controller_notified: bool


@dataclass(frozen=True)
class KeysReset:
    """The keys the key store could not open, now dropped."""

    dropped: tuple[KeyInfo, ...]
    controller_notified: bool

    @property
    def clusters(self) -> list[str]:
        """The clusters that lost a key (each needs ``keys issue``)."""
        return sorted({k.cluster for k in self.dropped})


def key_file_path(ctx: ServiceContext, cluster: str, given: Path | None) -> Path:
    """``given``, else ``DATA_DIR/keys/CLUSTER.json``."""
    return given.expanduser() if given else ctx.settings.data_dir / "keys" / f"{cluster}.json"


def write_key_file(
    ctx: ServiceContext,
    actor: Actor,
    cluster: str,
    action: KeyFileAction,
    output: Path | None = None,
) -> KeyFileWritten:
    """``issue`` a first key, ``rotate`` (a waiting next key) or just ``export``; then
    write the box's key file (mode 0600) with every key it should hold."""
    authorize(ctx, actor, Permission.KEYS, action=f"keys.{action}", target=cluster)
    if action not in ("issue", "rotate", "export"):
        raise InvalidRequest(f"no key action {action!r}; use issue, rotate or export")
    path = key_file_path(ctx, cluster, output)
    with ctx.session() as s:
        site = current_site(s).site.id
        if action == "issue":
            cluster_keys.issue(s, cluster, actor, keystore=ctx.keystore)
        elif action == "rotate":
            cluster_keys.rotate(s, cluster, actor, keystore=ctx.keystore)
        s.flush()
        kids = cluster_keys.export(s, site, cluster, path, actor, keystore=ctx.keystore)
        s.commit()
    return KeyFileWritten(cluster, action, path, tuple(kids))


def activate(ctx: ServiceContext, actor: Actor, cluster: str) -> KeyActivated:
    """Sign with the cluster's waiting key from now on (the box must have it)."""
    authorize(ctx, actor, Permission.KEYS, action="keys.activate", target=cluster)
    with ctx.session() as s:
        kid = cluster_keys.activate(s, cluster, actor).kid
        s.commit()
    return KeyActivated(cluster, kid, ctx.notify_controller())


def list_keys(ctx: ServiceContext, actor: Actor) -> list[KeyInfo]:
    """Every cluster's keys and their state (never the secrets)."""
    authorize(ctx, actor, Permission.KEYS, action="keys.list")
    with ctx.session() as s:
        return cluster_keys.list_keys(s)


def reset(ctx: ServiceContext, actor: Actor, *, confirmed: bool) -> KeysReset:
    """Drop the keys the key store cannot open (it is lost, no backup), so ``issue`` works.

    ``confirmed`` is the operator's explicit yes: every box that loses its key refuses
    the controller's commands until it has a new key file.
    """
    authorize(ctx, actor, Permission.KEYS, action="keys.reset", target="*")
    if not confirmed:
        raise InvalidRequest(
            "`keys reset` drops every cluster key the key store "
            f"{ctx.settings.keystore_path} cannot open; only do this when that key store is "
            "lost and there is no backup. Run `loudspeaker keys reset --all --yes`"
        )
    with ctx.session() as s:
        dropped = cluster_keys.reset_unopenable(s, actor, keystore=ctx.keystore)
        s.commit()
    return KeysReset(tuple(dropped), ctx.notify_controller())
