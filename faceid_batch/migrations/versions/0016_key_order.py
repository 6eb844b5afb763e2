"""Listings sorted by key read an index again

With keys unique per tenant (revision 0015) no index on the key alone kept its order (the
pattern index of revision 0013 serves prefixes, not the default collation's order), so a
listing sorted by key sorted every job. ``ix_jobs_key_id`` is that order, then the id.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_key_id", "jobs", ["idempotency_key", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_key_id", table_name="jobs")
