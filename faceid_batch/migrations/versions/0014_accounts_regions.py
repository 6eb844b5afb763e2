"""Several Tencent accounts and regions: where a job is verified, who called

- ``jobs.region``: the FaceID region the job is verified in (its media are staged only in
  that region's bucket, and only accounts serving it call for it). NULL: FACEID_REGION.
- ``attempts.account`` and ``attempts.region``: the account (its name in the accounts
  file, or ``default``) and the region that served each call.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("region", sa.String(length=32), nullable=True))
    op.add_column("attempts", sa.Column("account", sa.String(length=64), nullable=True))
    op.add_column("attempts", sa.Column("region", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("attempts", "region")
    op.drop_column("attempts", "account")
    op.drop_column("jobs", "region")
