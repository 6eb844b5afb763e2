"""admin_sessions: server-side login sessions of the review pages

The login cookie carried the admin token itself, with no expiry: anything that read the
browser's cookies held the token until it was revoked. The cookie now holds a random session
id; this table keeps only its SHA-256 (the unique lookup), the SHA-256 of the token that
opened it (checked again on every request, so revoking the token ends the session), when it
expires, and when it was ended by a logout.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # No index on expires_at: the only scan (the clean-up at login) reads a table of a few
    # rows per operator and day.
    op.create_table(
        "admin_sessions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("session_sha256", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_admin_sessions"),
        sa.UniqueConstraint("session_sha256", name="uq_admin_sessions_session_sha256"),
    )


def downgrade() -> None:
    op.drop_table("admin_sessions")
