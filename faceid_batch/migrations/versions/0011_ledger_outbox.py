"""Every job ends, every object is on a ledger, callbacks are due rows

- ``jobs.stage_attempts``: failed tries at staging a job's media (a source that does not
  answer, COS away), bounded by STAGE_MAX_ATTEMPTS; ``jobs.erased_at``: an erasure request
  removed its media and biometric columns (the row and its verdict stay).
- ``media_objects``: one row per object the product writes to COS, written before the PUT,
  so the purge finds every object whatever way its job ended (or if no job was ever stored
  for it). Existing rows: the objects jobs already name (``photo_key``, ``video_key``).
- ``webhook_messages``: a completion callback to deliver is a due row, claimed for a while
  by whoever sends it: a worker killed mid-delivery strands nothing, and the retry schedule
  spans more than a day. ``webhook_deliveries.message_id`` ties each attempt to it.
  Existing jobs: callbacks whose Celery retry was pending are not carried over (their old
  messages are turned into rows by the worker when they arrive).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)
PENDING = "due_at IS NOT NULL"
ORPHAN = "job_id IS NULL AND deleted_at IS NULL"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("stage_attempts", sa.Integer(), server_default="0",
                                    nullable=False))
    op.add_column("jobs", sa.Column("erased_at", WHEN, nullable=True))

    op.create_table(
        "media_objects",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("bucket", sa.String(length=200), nullable=True),
        sa.Column("object_key", sa.String(length=512), nullable=False),
        sa.Column("job_id", BigId, nullable=True),
        sa.Column("written_at", WHEN, nullable=False),
        sa.Column("deleted_at", WHEN, nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL",
                                name=op.f("fk_media_objects_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_media_objects")),
    )
    op.create_index("ix_media_objects_object_key", "media_objects", ["object_key"])
    op.create_index("ix_media_objects_job_id", "media_objects", ["job_id"])
    op.create_index("ix_media_objects_orphans", "media_objects", ["written_at"],
                    sqlite_where=sa.text(ORPHAN), postgresql_where=sa.text(ORPHAN))
    for column in ("photo_key", "video_key"):
        op.execute(f"INSERT INTO media_objects (object_key, job_id, written_at) "
                   f"SELECT {column}, id, COALESCE(started_at, created_at) FROM jobs "
                   f"WHERE {column} IS NOT NULL AND media_purged_at IS NULL")

    op.create_table(
        "webhook_messages",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("lane", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("due_at", WHEN, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("claim", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", WHEN, nullable=True),
        sa.Column("ended_at", WHEN, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name=op.f("fk_webhook_messages_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_messages")),
    )
    op.create_index("ix_webhook_messages_job_id", "webhook_messages", ["job_id"])
    op.create_index("ix_webhook_messages_due", "webhook_messages", ["due_at", "id"],
                    sqlite_where=sa.text(PENDING), postgresql_where=sa.text(PENDING))
    with op.batch_alter_table("webhook_deliveries") as batch_op:
        batch_op.add_column(sa.Column("message_id", BigId, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch_op:
        batch_op.drop_column("message_id")
    op.drop_index("ix_webhook_messages_due", table_name="webhook_messages")
    op.drop_index("ix_webhook_messages_job_id", table_name="webhook_messages")
    op.drop_table("webhook_messages")
    op.drop_index("ix_media_objects_orphans", table_name="media_objects")
    op.drop_index("ix_media_objects_job_id", table_name="media_objects")
    op.drop_index("ix_media_objects_object_key", table_name="media_objects")
    op.drop_table("media_objects")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("erased_at")
        batch_op.drop_column("stage_attempts")
