"""Write a new migration from the difference between the models and a fresh database.

.venv/bin/python -m loudspeaker.migrations "add column x to y"
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command

from loudspeaker.db import head_revision, init_db, make_engine, migration_config


def main() -> None:
    """Autogenerate a revision against a scratch SQLite database at the current head."""
    if len(sys.argv) != 2:
        raise SystemExit('usage: python -m loudspeaker.migrations "what changed"')
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        init_db(engine)
        cfg = migration_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            # Numbered ids keep the "is the database current?" check free of Alembic.
            next_id = f"{int(head_revision()) + 1:04d}"
            command.revision(cfg, message=sys.argv[1], autogenerate=True, rev_id=next_id)


if __name__ == "__main__":
    main()
