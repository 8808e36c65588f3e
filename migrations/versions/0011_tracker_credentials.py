"""tracker credentials: an organization's sealed Weights & Biases API key; jobs' integrations

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 18:10:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wandb_api_key_encrypted", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("wandb_api_key_hint", sa.String(length=32), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "integrations",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("integrations")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("wandb_api_key_hint")
        batch_op.drop_column("wandb_api_key_encrypted")
