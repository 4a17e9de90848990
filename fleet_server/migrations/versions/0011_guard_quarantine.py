"""issue 15: devices an operator (or the flood rule) quarantined

Revision ID: 0011_guard_quarantine
Revises: 0010_guard
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_guard_quarantine"
down_revision = "0010_guard"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantined_devices",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("since", sa.Float, nullable=False),
        sa.Column("by", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("automatic", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quarantined_devices")
