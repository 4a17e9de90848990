"""alerts and their flap-suppression conditions

Revision ID: 0004_alerts
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_alerts"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.String(256), nullable=False),
        sa.Column("value", sa.String(64), nullable=True),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("acknowledged_at", sa.Float, nullable=True),
        sa.Column("acknowledged_by", sa.String(64), nullable=True),
        sa.Column("resolved_at", sa.Float, nullable=True),
    )
    op.create_index("ix_alerts_device_id", "alerts", ["device_id"])
    op.create_index("ix_alerts_state", "alerts", ["state"])
    op.create_table(
        "alert_conditions",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("rule", sa.String(32), primary_key=True),
        sa.Column("bad_count", sa.Integer, nullable=False),
        sa.Column("good_count", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_conditions")
    op.drop_index("ix_alerts_state", table_name="alerts")
    op.drop_index("ix_alerts_device_id", table_name="alerts")
    op.drop_table("alerts")
