"""The database schedules every job: jobs.due_at and jobs.lease_id, batches.weight

``due_at`` replaces ``next_attempt_at``: it is set only while a job waits in the database
(queued, or retrying after its backoff), and partial indexes hold only those rows, so the
feeder reads a backlog of millions by index seeks. ``enqueued_at`` now means "its
message is in Redis and no worker has taken it yet" and is cleared when a worker does.

Existing rows: a queued job that was never sent, and every retrying job (whose countdown
message may be held by a worker that is gone), become due; ``enqueued_at`` is cleared
everywhere but on queued jobs whose message is out (the feeder's lost-message check sends
any that Redis no longer has).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DUE = "due_at IS NOT NULL"
DUE_AGAIN = "due_at IS NOT NULL AND started_at IS NOT NULL"
DUE_NO_BATCH = "due_at IS NOT NULL AND batch_id IS NULL"
OUT = "enqueued_at IS NOT NULL"


def _partial(name: str, columns: list[str], where: str) -> None:
    op.create_index(name, "jobs", columns, unique=False, sqlite_where=sa.text(where),
                    postgresql_where=sa.text(where))


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("lease_id", sa.String(length=100), nullable=True))
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("weight", sa.Float(), server_default="1",
                                      nullable=False))
    op.execute("UPDATE jobs SET due_at = created_at "
               "WHERE state = 'queued' AND enqueued_at IS NULL")
    op.execute("UPDATE jobs SET due_at = COALESCE(next_attempt_at, CURRENT_TIMESTAMP), "
               "enqueued_at = NULL WHERE state = 'retrying'")
    op.execute("UPDATE jobs SET enqueued_at = NULL WHERE state <> 'queued'")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("next_attempt_at")
    _partial("ix_jobs_due", ["lane", "batch_id", "due_at", "id"], DUE)
    _partial("ix_jobs_due_again", ["lane", "batch_id", "due_at", "id"], DUE_AGAIN)
    _partial("ix_jobs_due_no_batch", ["lane", "due_at", "id"], DUE_NO_BATCH)
    _partial("ix_jobs_enqueued_at", ["enqueued_at"], OUT)


def downgrade() -> None:
    op.drop_index("ix_jobs_enqueued_at", table_name="jobs")
    op.drop_index("ix_jobs_due_no_batch", table_name="jobs")
    op.drop_index("ix_jobs_due_again", table_name="jobs")
    op.drop_index("ix_jobs_due", table_name="jobs")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True),
                                      nullable=True))
    # The old code sends what it finds queued without a message; a due job had none.
    op.execute("UPDATE jobs SET next_attempt_at = due_at, enqueued_at = NULL "
               "WHERE due_at IS NOT NULL")
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_column("weight")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("lease_id")
        batch_op.drop_column("due_at")
