"""What every service needs: the settings, the database, the key store, the controller."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import Session

from loudspeaker.config import Settings
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.keystore import Keystore
from loudspeaker.runtime import ControllerCard

DEFAULT_ZONE = "Asia/Ho_Chi_Minh"


class ServiceContext:
    """Where the data is and how to reach the running controller.

    One per face invocation (a CLI command, a web request's application); cheap to make:
    the engine and the key store open on first use. Sessions are never shared across
    threads: each call to :meth:`session` makes a new one.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._keystore: Keystore | None = None

    @property
    def engine(self) -> Engine:
        """The database engine (schema migrated on first use)."""
        if self._engine is None:
            from loudspeaker.db import init_db, make_engine
            from loudspeaker.filemodes import secure_data_dir

            secure_data_dir(self.settings)
            self._engine = make_engine(self.settings.database_url)
            init_db(self._engine, self.keystore)
        return self._engine

    @property
    def keystore(self) -> Keystore:
        """The key store that seals the cluster signing keys in the database."""
        if self._keystore is None:
            self._keystore = Keystore.of(self.settings)
        return self._keystore

    def session(self) -> Session:
        """A new session; one per unit of work, never shared across threads."""
        return Session(self.engine, expire_on_commit=False)

    def controller(self) -> ControllerCard | None:
        """The running controller's address card, or None."""
        return ControllerCard.read(self.settings.run_dir)

    def notify_controller(self) -> bool:
        """Tell the running controller that stored work changed.

        True when a controller is running (it is poked now, and polls the database anyway
        should the poke be lost); False when none is running: the work stays stored and is
        picked up when ``loudspeaker serve`` starts. Every service that writes work for the
        controller calls this once, after its commit, and returns the answer in its result
        so the face can say so.
        """
        card = self.controller()
        if card is None:
            return False
        card.poke()
        return True

    def zone(self) -> ZoneInfo:
        """The site's time zone (Asia/Ho_Chi_Minh when no site is loaded)."""
        from loudspeaker.site import current_site

        with self.session() as s:
            try:
                return ZoneInfo(current_site(s).site.timezone)
            except LoudspeakerError:
                return ZoneInfo(DEFAULT_ZONE)
