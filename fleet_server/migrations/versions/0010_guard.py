"""issue 15: events unique per (device, event id); dead letters

Revision ID: 0010_guard
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_guard"
down_revision = "0001"
branch_labels = None
# the events table (0002) must exist before its unique key changes
depends_on = "0002_events"


def _event_id_unique_names() -> list[str]:
    insp = sa.inspect(op.get_bind())
    return [
        str(uc["name"])
        for uc in insp.get_unique_constraints("events")
        if uc["column_names"] == ["event_id"] and uc["name"]
    ]


def _events_without_unique() -> sa.Table:
    """The events table of 0002 without its UNIQUE(event_id), for SQLite's table copy."""
    return sa.Table(
        "events",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(256), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(256), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Index("ix_events_device_ts", "device_id", "ts"),
        sa.Index("ix_events_type_ts", "type", "ts"),
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop the table's unnamed UNIQUE(event_id): the table is copied into
        # one without it (rows, ids and indexes kept)
        with op.batch_alter_table(
            "events", recreate="always", copy_from=_events_without_unique()
        ) as batch:
            batch.create_unique_constraint("uq_events_device_event", ["device_id", "event_id"])
    else:
        for name in _event_id_unique_names():
            op.drop_constraint(name, "events", type_="unique")
        op.create_unique_constraint("uq_events_device_event", "events", ["device_id", "event_id"])
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("failed_at", sa.Float, nullable=False),
        sa.Column("error", sa.String(1024), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("ix_dead_letters_device", "dead_letters", ["device_id", "failed_at"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_device", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_constraint("uq_events_device_event", "events", type_="unique")
