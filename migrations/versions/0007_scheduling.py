"""scheduling: job priority and pool, organization quotas and operator flag, workers

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 19:15:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('workers',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('hostname', sa.String(length=256), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('pool', sa.String(length=64), nullable=False),
    sa.Column('gpus', sa.Integer(), server_default='0', nullable=False),
    sa.Column('gpu_memory_mb', sa.Integer(), nullable=True),
    sa.Column('current_job_id', sa.String(length=64), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('draining', sa.Boolean(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_workers'))
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workers_pool'), ['pool'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('pool', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_jobs_dispatch', ['status', 'pool', 'priority', 'created_at'], unique=False)

    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_operator', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('max_running_jobs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('max_queued_jobs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('last_dispatched_at', sa.DateTime(timezone=True), nullable=True))

    # The oldest organization (the one `dorado run` bootstrapped) becomes the operator.
    organizations = sa.table('organizations', sa.column('id', sa.String),
                             sa.column('created_at', sa.DateTime),
                             sa.column('is_operator', sa.Boolean))
    oldest = sa.select(organizations.c.id).order_by(organizations.c.created_at,
                                                   organizations.c.id).limit(1)
    op.execute(organizations.update()
               .where(organizations.c.id.in_(oldest.scalar_subquery()))
               .values(is_operator=True))


def downgrade() -> None:
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_column('last_dispatched_at')
        batch_op.drop_column('max_queued_jobs')
        batch_op.drop_column('max_running_jobs')
        batch_op.drop_column('is_operator')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_dispatch')
        batch_op.drop_column('pool')
        batch_op.drop_column('priority')

    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workers_pool'))

    op.drop_table('workers')
