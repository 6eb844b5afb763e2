"""indexes for the admin filters (queries.py)

A filter column followed by the id, so that a filtered page in id order (the default listing)
reads only the rows it shows; created_at and finished_at for date ranges and throughput.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = {
    "jobs": {
        "ix_jobs_batch_id_id": ["batch_id", "id"],
        "ix_jobs_lane_id": ["lane", "id"],
        "ix_jobs_result_code_id": ["result_code", "id"],
        "ix_jobs_created_at_id": ["created_at", "id"],
        "ix_jobs_finished_at": ["finished_at"],
    },
    "results": {
        "ix_results_sim_job_id": ["sim", "job_id"],
    },
}


def upgrade() -> None:
    for table, indexes in INDEXES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, columns in indexes.items():
                batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    for table, indexes in INDEXES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in indexes:
                batch_op.drop_index(name)
