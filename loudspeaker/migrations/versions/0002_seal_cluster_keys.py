"""seal cluster signing keys under the key store

Cluster signing keys were stored in clear (``cluster_key.secret_hex``): anyone who could
read the database file, a backup or a PostgreSQL account had every key. They are now
AES-GCM sealed under ``DATA_DIR/secrets/keystore.key`` (loudspeaker.keystore) in
``cluster_key.secret_sealed``. ``init_db`` hands the key store over in
``config.attributes["keystore"]`` and afterwards reclaims the space the clear values used
(SQLite ``VACUUM`` and a WAL truncation, PostgreSQL ``VACUUM FULL cluster_key``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 13:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import context, op

from loudspeaker.exceptions import KeystoreError
from loudspeaker.keystore import Keystore, cluster_key_context

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _keystore(rows: int) -> Keystore | None:
    keystore = context.config.attributes.get("keystore")
    if rows and not isinstance(keystore, Keystore):
        raise KeystoreError(
            f"{rows} cluster signing keys must be sealed under the key store, and none was "
            "given: open this database with `loudspeaker` (or `serve`) and its --data-dir"
        )
    return keystore if isinstance(keystore, Keystore) else None


def upgrade() -> None:
    conn = op.get_bind()
    # Read and check first: SQLite's DDL is not rolled back by pysqlite, so refuse before it.
    rows = conn.execute(sa.text("SELECT id, cluster_id, kid, secret_hex FROM cluster_key")).all()
    keystore = _keystore(len(rows))
    with op.batch_alter_table("cluster_key") as batch:
        batch.add_column(
            sa.Column("secret_sealed", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
    for row_id, cluster, kid, secret_hex in rows:
        assert keystore is not None
        sealed = keystore.seal(bytes.fromhex(secret_hex), cluster_key_context(cluster, kid))
        conn.execute(
            sa.text("UPDATE cluster_key SET secret_sealed = :s WHERE id = :i"),
            {"s": sealed, "i": row_id},
        )
    with op.batch_alter_table("cluster_key") as batch:
        batch.alter_column(
            "secret_sealed", existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=False
        )
        batch.drop_column("secret_hex")


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, cluster_id, kid, secret_sealed FROM cluster_key")).all()
    keystore = _keystore(len(rows))
    with op.batch_alter_table("cluster_key") as batch:
        batch.add_column(sa.Column("secret_hex", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    for row_id, cluster, kid, sealed in rows:
        assert keystore is not None
        secret = keystore.open(sealed, cluster_key_context(cluster, kid))
        conn.execute(
            sa.text("UPDATE cluster_key SET secret_hex = :s WHERE id = :i"),
            {"s": secret.hex(), "i": row_id},
        )
    with op.batch_alter_table("cluster_key") as batch:
        batch.alter_column(
            "secret_hex", existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=False
        )
        batch.drop_column("secret_sealed")
