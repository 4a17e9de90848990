"""event_streams: per-device event sequence accounting for receipts (issue 14)

Revision ID: 0009_receipts
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_receipts"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_streams",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("epoch", sa.String(256), nullable=False),
        sa.Column("top", sa.BigInteger, nullable=False),
        sa.Column("holes", sa.JSON, nullable=False),
        sa.Column("open_count", sa.BigInteger, nullable=False),
        sa.Column("lost", sa.BigInteger, nullable=False),
        sa.Column("lost_ranges", sa.JSON, nullable=False),
        sa.Column("late", sa.BigInteger, nullable=False),
        sa.Column("old_epochs", sa.JSON, nullable=False),
        sa.Column("refused", sa.BigInteger, nullable=False),
        sa.Column("dropped", sa.BigInteger, nullable=False),
        sa.Column("unreceipted", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_event_streams_open_count", "event_streams", ["open_count"])


def downgrade() -> None:
    op.drop_index("ix_event_streams_open_count", "event_streams")
    op.drop_table("event_streams")
