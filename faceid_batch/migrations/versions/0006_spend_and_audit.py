"""spend discipline and access audit: preflight findings, billable calls, dedupe hits,
named admin tokens (hashed), append-only access audit

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

# The application only ever INSERTs into access_audit; these refuse anything else.
SQLITE_TRIGGERS = [
    """CREATE TRIGGER access_audit_no_update BEFORE UPDATE ON access_audit
       BEGIN SELECT RAISE(ABORT, 'access_audit is append-only'); END""",
    """CREATE TRIGGER access_audit_no_delete BEFORE DELETE ON access_audit
       BEGIN SELECT RAISE(ABORT, 'access_audit is append-only'); END""",
]
PG_TRIGGERS = [
    """CREATE FUNCTION access_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'access_audit is append-only'; END $$""",
    """CREATE TRIGGER access_audit_no_change BEFORE UPDATE OR DELETE ON access_audit
       FOR EACH ROW EXECUTE FUNCTION access_audit_append_only()""",
    """CREATE TRIGGER access_audit_no_truncate BEFORE TRUNCATE ON access_audit
       FOR EACH STATEMENT EXECUTE FUNCTION access_audit_append_only()""",
]


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("preflight", sa.JSON(), nullable=True))
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("billable", sa.Boolean(), nullable=True))

    op.create_table(
        "dedupe_hits",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("batch_id", BigId, nullable=True),
        sa.Column("job_id", BigId, nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"],
                                name="fk_dedupe_hits_batch_id_batches", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_dedupe_hits"),
    )
    op.create_index("ix_dedupe_hits_at", "dedupe_hits", ["at"])
    op.create_index("ix_dedupe_hits_batch_id", "dedupe_hits", ["batch_id"])

    op.create_table(
        "admin_tokens",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("last_used_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_admin_tokens"),
        sa.UniqueConstraint("name", name="uq_admin_tokens_name"),
        sa.UniqueConstraint("token_sha256", name="uq_admin_tokens_token_sha256"),
    )

    op.create_table(
        "access_audit",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("token_id", BigId, nullable=True),
        sa.Column("surface", sa.String(16), nullable=False),
        sa.Column("what", sa.String(32), nullable=False),
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("remote", sa.String(200), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_access_audit"),
    )
    op.create_index("ix_access_audit_at", "access_audit", ["at"])
    op.create_index("ix_access_audit_actor", "access_audit", ["actor"])
    op.create_index("ix_access_audit_job_id_id", "access_audit", ["job_id", "id"])

    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE_TRIGGERS, "postgresql": PG_TRIGGERS}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TABLE access_audit")
        op.execute("DROP FUNCTION access_audit_append_only()")
    else:
        op.drop_table("access_audit")
    op.drop_table("admin_tokens")
    op.drop_index("ix_dedupe_hits_batch_id", table_name="dedupe_hits")
    op.drop_index("ix_dedupe_hits_at", table_name="dedupe_hits")
    op.drop_table("dedupe_hits")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("billable")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("preflight")
