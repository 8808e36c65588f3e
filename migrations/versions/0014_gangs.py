"""multi-node jobs: a job's gang, and the worker bookings that make it up

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 16:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gang', JSON, nullable=True))
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('booked_job_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('booked_attempt', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('node_rank', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('joined_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_workers_booked_job_id'), ['booked_job_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workers_booked_job_id'))
        batch_op.drop_column('joined_at')
        batch_op.drop_column('node_rank')
        batch_op.drop_column('booked_attempt')
        batch_op.drop_column('booked_job_id')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('gang')
