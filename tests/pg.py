"""A throwaway PostgreSQL cluster for the integration suite (initdb + pg_ctl)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from loudspeaker.broker import free_port, wait_listening


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    for name in ("initdb",):
        found = shutil.which(name)
        if found:
            return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class PgCluster:
    """``start()`` runs initdb and pg_ctl in a temp dir; ``stop()`` removes it all."""

    def __init__(self) -> None:
        self.port = 0
        self.dir: Path | None = None
        self._user: str | None = None
        self._counter = 0

    def _run(self, args: list[str]) -> None:
        # initdb refuses to run as root; use the postgres account when we are root.
        if os.geteuid() == 0:
            args = ["runuser", "-u", self._user or "postgres", "--", *args]
        subprocess.run(args, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Create and start the cluster; raise RuntimeError if PostgreSQL is missing."""
        bindir = find_pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL (initdb) not found; `make test` installs it")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
                self._user = "postgres"
            except KeyError:
                self._user = "nobody"
        self.dir = Path(tempfile.mkdtemp(prefix="ls-pg-"))
        if self._user:
            shutil.chown(self.dir, user=self._user)
        data = self.dir / "data"
        self.port = free_port()
        self._run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
        self._run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.dir / "log"),
                "-o",
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                "-w",
                "start",
            ]
        )
        if not wait_listening("127.0.0.1", self.port, 30):
            raise RuntimeError("PostgreSQL did not start listening")
        self._bindir = bindir

    def new_database(self) -> str:
        """Create a fresh database and return its SQLAlchemy URL."""
        import psycopg2

        self._counter += 1
        name = f"ls_test_{os.getpid()}_{self._counter}"
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server and delete its files."""
        if self.dir is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(
                [
                    str(self._bindir / "pg_ctl"),
                    "-D",
                    str(self.dir / "data"),
                    "-m",
                    "immediate",
                    "stop",
                ]
            )
        shutil.rmtree(self.dir, ignore_errors=True)
