"""indexes for every sort and filter of the admin listing (queries.py)

A sort column followed by the id, so a page in that order (ties by id) is read from the
front of an index; a filter on the same index narrows it. A descending sort on a column
that may be NULL orders by ``(col IS NULL), col DESC, id DESC`` (its NULLs last, the same
on both backends), and an expression index holds exactly that order.

- ``ix_jobs_sim_id``, ``ix_jobs_sim_desc``: Sim ascending and descending (``jobs.sim``,
  revision 0012); the first also serves the Sim range filters.
- ``ix_jobs_passed_sim``, ``ix_jobs_passed_sim_id``: a verdict sorted by Sim, highest first
  (the near misses) and lowest first: a verdict and its Sim go together, so walking the
  Sim order alone would pass over most jobs before the first of the other verdict.
- ``ix_jobs_state_id``, ``ix_jobs_attempts_id``: the state filter in id order, and the
  sorts by state and by attempts.
- ``ix_jobs_finished_desc``, ``ix_jobs_code_desc``: newest finished first and outcome codes
  Z to A, NULLs last (ascending reads ``ix_jobs_finished_at``, ``ix_jobs_result_code_id``).
- ``ix_jobs_batch_finished``: a batch's throughput per minute (``stats``) from the index.
- ``ix_jobs_key_pattern``: a key prefix (``LIKE 'prefix%'``) as a range of the index (and
  the ids, so a prefix's page in id order is an index-only scan),
  whatever the database's collation (``varchar_pattern_ops`` compares bytes). SQLite has
  no operator classes: there it is a plain index on the key.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

INDEXES: dict[str, list[str | sa.TextClause]] = {
    "ix_jobs_sim_id": ["sim", "id"],
    "ix_jobs_sim_desc": [sa.text("(sim IS NULL)"), sa.text("sim DESC"), sa.text("id DESC")],
    "ix_jobs_passed_sim": ["passed", sa.text("(sim IS NULL)"), sa.text("sim DESC"),
                           sa.text("id DESC")],
    "ix_jobs_passed_sim_id": ["passed", "sim", "id"],
    "ix_jobs_state_id": ["state", "id"],
    "ix_jobs_attempts_id": ["attempts", "id"],
    "ix_jobs_finished_desc": [sa.text("(finished_at IS NULL)"), sa.text("finished_at DESC"),
                              sa.text("id DESC")],
    "ix_jobs_code_desc": [sa.text("(result_code IS NULL)"), sa.text("result_code DESC"),
                          sa.text("id DESC")],
    "ix_jobs_batch_finished": ["batch_id", "finished_at"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "jobs", columns, unique=False)
    op.create_index("ix_jobs_key_pattern", "jobs", ["idempotency_key", "id"], unique=False,
                    postgresql_ops={"idempotency_key": "varchar_pattern_ops"})


def downgrade() -> None:
    op.drop_index("ix_jobs_key_pattern", table_name="jobs")
    for name in reversed(INDEXES):
        op.drop_index(name, table_name="jobs")
