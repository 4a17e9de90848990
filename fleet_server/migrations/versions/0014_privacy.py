"""privacy: site snapshot policies, camera masks, refused-image counters

Revision ID: 0014
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_privacy"
down_revision = "0001"
branch_labels = None
# the index on events.ts needs the events table (0002)
depends_on = "0002_events"


def upgrade() -> None:
    op.create_table(
        "site_privacy",
        sa.Column("site_id", sa.String(64), primary_key=True),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("legal_basis", sa.Text, nullable=True),
        sa.Column("decided_by", sa.String(64), nullable=False),
        sa.Column("decided_at", sa.Float, nullable=False),
        sa.Column("retention_days", sa.Integer, nullable=True),
    )
    op.create_table(
        "camera_masks",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("masks", sa.JSON, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("stale", sa.Boolean, nullable=False),
        sa.Column("stale_since", sa.Float, nullable=True),
        sa.Column("confirmed_by", sa.String(64), nullable=True),
        sa.Column("confirmed_at", sa.Float, nullable=True),
    )
    op.create_table(
        "privacy_refusals",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(32), primary_key=True),
        sa.Column("site_id", sa.String(64), nullable=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
    )
    op.create_index("ix_events_ts", "events", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_events_ts", table_name="events")
    op.drop_table("privacy_refusals")
    op.drop_table("camera_masks")
    op.drop_table("site_privacy")
