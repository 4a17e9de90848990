"""hourly health roll-ups of old heartbeats

Revision ID: 0006_rollups
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_rollups"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "health_rollups",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("bucket", sa.Float, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("stats", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("health_rollups")
