"""The batch dashboard and report: a Sim on the job, calls by minute, the manifest's hash

- ``jobs.sim``: the Sim of the job's verdict, beside ``passed`` (it stays in ``results``
  too), so a batch's Sim histogram and a listing sorted by Sim read the jobs table only.
  Existing jobs take it from their result.
- ``ix_jobs_batch_tally``: a batch's counts by state, outcome, attempts and Sim in one
  index-only scan (admin/dashboard.py).
- ``batch_calls``: FaceID calls of a batch's jobs by minute, answer code, billing and the
  account that made them, and the time they waited for their rate-limit slot; one row per
  (batch, minute, code, billable, account), added to in the transaction that records each
  call. Existing calls are
  counted from their attempts (their wait was not recorded: 0).
- ``batches.manifest_sha256``: the SHA-256 of the manifest file a backfill read, so its
  end-of-run report names the input it answers.
- ``batch_actions``: who paused, resumed, cancelled, re-weighted or retried a batch, or
  resent its callbacks, from which surface, and what the action matched (append-only, like
  access_audit).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("sim", sa.Float(), nullable=True))
    op.execute("UPDATE jobs SET sim = (SELECT results.sim FROM results "
               "WHERE results.job_id = jobs.id) "
               "WHERE EXISTS (SELECT 1 FROM results WHERE results.job_id = jobs.id)")
    op.create_index("ix_jobs_batch_tally", "jobs",
                    ["batch_id", "state", "result_code", "passed", "attempts", "sim"])
    op.add_column("batches", sa.Column("manifest_sha256", sa.String(length=64), nullable=True))
    op.create_table(
        "batch_calls",
        sa.Column("batch_id", BigId, nullable=False),
        sa.Column("minute", WHEN, nullable=False),
        sa.Column("code", sa.String(length=80), nullable=False),
        sa.Column("billable", sa.Boolean(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("waited_ms", sa.BigInteger(), nullable=False),
        sa.Column("account", sa.String(length=64), server_default="default", nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE",
                                name=op.f("fk_batch_calls_batch_id_batches")),
        sa.PrimaryKeyConstraint("batch_id", "minute", "code", "billable", "account",
                                name=op.f("pk_batch_calls")),
    )
    _count_existing_calls()
    op.create_table(
        "batch_actions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", WHEN, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("token_id", BigId, nullable=True),
        sa.Column("surface", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("batch_id", BigId, nullable=False),
        sa.Column("remote", sa.String(length=200), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_actions")),
    )
    op.create_index(op.f("ix_batch_actions_batch_id"), "batch_actions", ["batch_id"])


def _count_existing_calls() -> None:
    if op.get_bind().dialect.name == "postgresql":
        minute, no = "date_trunc('minute', a.started_at)", "false"
    else:
        # The text SQLAlchemy stores a DATETIME as on SQLite, truncated to its minute.
        minute, no = "strftime('%Y-%m-%d %H:%M:00.000000', a.started_at)", "0"
    op.execute(
        "INSERT INTO batch_calls (batch_id, minute, code, billable, calls, waited_ms) "
        f"SELECT j.batch_id, {minute}, a.code, COALESCE(a.billable, {no}), count(*), 0 "
        "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id IS NOT NULL "
        f"GROUP BY j.batch_id, {minute}, a.code, COALESCE(a.billable, {no})")


def downgrade() -> None:
    op.drop_index(op.f("ix_batch_actions_batch_id"), table_name="batch_actions")
    op.drop_table("batch_actions")
    op.drop_table("batch_calls")
    op.drop_column("batches", "manifest_sha256")
    op.drop_index("ix_jobs_batch_tally", table_name="jobs")
    op.drop_column("jobs", "sim")
