"""devices and heartbeats

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.String(64), nullable=True),
        sa.Column("state_ts", sa.Float, nullable=False),
        sa.Column("state_changed_at", sa.Float, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("heartbeat_interval_s", sa.Float, nullable=True),
        sa.Column("last_heartbeat_at", sa.Float, nullable=True),
        sa.Column("last_seq", sa.BigInteger, nullable=True),
        sa.Column("seq_gaps", sa.Integer, nullable=False),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("last_heartbeat", sa.JSON, nullable=True),
    )
    op.create_table(
        "heartbeats",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_index("ix_heartbeats_device_ts", "heartbeats", ["device_id", "ts"])
    op.create_index(
        "ux_heartbeats_device_seq_ts", "heartbeats", ["device_id", "seq", "ts"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_heartbeats_device_seq_ts", table_name="heartbeats")
    op.drop_index("ix_heartbeats_device_ts", table_name="heartbeats")
    op.drop_table("heartbeats")
    op.drop_table("devices")
