"""Producer API: admin_tokens.scope and jobs.submitted_by

A token is "admin" (what every token was until now) or "submit": it may create
verifications over the producer API and read its own, nothing else. ``submitted_by`` names
the token a job came from, so a producer sees only its own jobs.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy of the table): SQLite supports it, and a copy of jobs
    # would have to carry its partial indexes over.
    op.add_column("admin_tokens", sa.Column("scope", sa.String(length=16),
                                            server_default="admin", nullable=False))
    op.add_column("jobs", sa.Column("submitted_by", BigId, nullable=True))
    op.create_index("ix_jobs_submitted_by", "jobs", ["submitted_by"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_submitted_by", table_name="jobs")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("submitted_by")
    with op.batch_alter_table("admin_tokens") as batch_op:
        batch_op.drop_column("scope")
