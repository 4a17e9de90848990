"""device tags and hardware inventory

Revision ID: 0007
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_tags",
        sa.Column(
            "device_id",
            sa.String(64),
            sa.ForeignKey("devices.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_device_tags_tag", "device_tags", ["tag"])
    op.add_column("devices", sa.Column("hardware", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("hardware")
    op.drop_index("ix_device_tags_tag", table_name="device_tags")
    op.drop_table("device_tags")
