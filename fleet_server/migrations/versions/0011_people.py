"""people: dashboard sessions kept server-side; superseded certificates; replacement tokens

Revision ID: 0011_people
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_people"
down_revision = "0001"
branch_labels = None
# users, certificates and enrollment_tokens (0003) must exist first
depends_on = "0003_identity"


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sid_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("revoked_by", sa.String(64), nullable=True),
    )
    op.create_index("ix_ui_sessions_user", "ui_sessions", ["user_name"])
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("superseded_at", sa.Float, nullable=True))
    with op.batch_alter_table("enrollment_tokens") as batch:
        batch.add_column(
            sa.Column("replacement", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("enrollment_tokens") as batch:
        batch.drop_column("replacement")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("superseded_at")
    op.drop_index("ix_ui_sessions_user", "ui_sessions")
    op.drop_table("ui_sessions")
