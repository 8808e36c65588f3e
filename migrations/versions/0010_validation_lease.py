"""validation: organizations.last_validated_at (validators take organizations in turn)

The validation lease itself reuses jobs.worker and jobs.lease_expires_at.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 18:00:00.000000
"""
from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_validated_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_column('last_validated_at')
