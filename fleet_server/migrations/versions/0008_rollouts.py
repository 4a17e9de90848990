"""rollout campaigns, their devices, device claims; sites get an optional time zone

Revision ID: 0008
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0001"
branch_labels = None
# sites (0003) must exist before a column is added to it
depends_on = "0003_identity"


def upgrade() -> None:
    op.create_table(
        "rollout_campaigns",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("artifact", sa.String(16), nullable=False),
        sa.Column("release", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("allow_downgrade", sa.Boolean, nullable=False),
        sa.Column("trial_s", sa.Float, nullable=True),
        sa.Column("filter", sa.JSON, nullable=False),
        sa.Column("waves", sa.JSON, nullable=False),
        sa.Column("wave_ends", sa.JSON, nullable=False),
        sa.Column("success_threshold", sa.Float, nullable=False),
        sa.Column("failure_threshold", sa.Float, nullable=False),
        sa.Column("soak_s", sa.Float, nullable=False),
        sa.Column("rate_per_min", sa.Integer, nullable=False),
        sa.Column("windows", sa.JSON, nullable=False),
        sa.Column("device_deadline_s", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(512), nullable=True),
        sa.Column("rollback_of", sa.String(40), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=True),
        sa.Column("ignored_reports", sa.Integer, nullable=False),
    )
    op.create_index("ix_rollout_campaigns_state", "rollout_campaigns", ["state"])
    op.create_table(
        "rollout_devices",
        sa.Column(
            "campaign_id",
            sa.String(40),
            sa.ForeignKey("rollout_campaigns.id"),
            primary_key=True,
        ),
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("from_release", sa.String(64), nullable=True),
        sa.Column("asked_at", sa.Float, nullable=True),
        sa.Column("state_at", sa.Float, nullable=True),
        sa.Column("committed_at", sa.Float, nullable=True),
        sa.Column("healthy", sa.Boolean, nullable=True),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=True),
        sa.Column("error", sa.String(512), nullable=True),
        sa.Column("cleared", sa.Boolean, nullable=False),
    )
    op.create_index("ix_rollout_devices_device", "rollout_devices", ["device_id"])
    op.create_index("ix_rollout_devices_state", "rollout_devices", ["campaign_id", "state"])
    op.create_table(
        "rollout_claims",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("campaign_id", sa.String(40), nullable=False),
    )
    op.create_index("ix_rollout_claims_campaign_id", "rollout_claims", ["campaign_id"])
    op.add_column("sites", sa.Column("timezone", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("timezone")
    op.drop_index("ix_rollout_claims_campaign_id", table_name="rollout_claims")
    op.drop_table("rollout_claims")
    op.drop_index("ix_rollout_devices_state", table_name="rollout_devices")
    op.drop_index("ix_rollout_devices_device", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_index("ix_rollout_campaigns_state", table_name="rollout_campaigns")
    op.drop_table("rollout_campaigns")
