"""remote commands and desired device config

Revision ID: 0005_commands
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_commands"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commands",
        sa.Column("cid", sa.String(40), primary_key=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("cmd", sa.String(32), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.String(512), nullable=True),
    )
    op.create_index("ix_commands_device_id", "commands", ["device_id"])
    op.create_index("ix_commands_state", "commands", ["state"])
    op.create_table(
        "device_configs",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.Column("reported_version", sa.Integer, nullable=True),
        sa.Column("reported_ok", sa.Boolean, nullable=True),
        sa.Column("reported_error", sa.String(512), nullable=True),
        sa.Column("reported_at", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("device_configs")
    op.drop_index("ix_commands_state", table_name="commands")
    op.drop_index("ix_commands_device_id", table_name="commands")
    op.drop_table("commands")
