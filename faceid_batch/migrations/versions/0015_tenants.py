"""Tenants: keys, webhook secrets, shares and quotas per producer organisation

- ``tenants``, with the ``default`` tenant (id 1) that every existing job, batch and submit
  token belongs to: a deployment upgraded without any new setting has this one tenant.
- ``tenant_secrets``: each tenant's webhook signing secrets (current and previous).
- ``tenant_calls``: FaceID calls per tenant and UTC day (the quota check reads one row).
- ``jobs.tenant_id``, ``batches.tenant_id`` (NOT NULL, default 1), ``admin_tokens.tenant_id``
  (submit tokens: 1; admin tokens: NULL, every tenant).
- Idempotency keys unique per tenant: ``uq_jobs_idempotency_key`` becomes
  ``uq_jobs_tenant_id`` on (tenant_id, idempotency_key); on SQLite the table is rebuilt
  (batch mode), rows in place.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("regions", sa.JSON(), nullable=True),
        sa.Column("accounts", sa.JSON(), nullable=True),
        sa.Column("max_calls_per_day", sa.BigInteger(), nullable=True),
        sa.Column("weight", sa.Float(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
    )
    tenants = sa.table("tenants", sa.column("id", sa.BigInteger()), sa.column("name"),
                       sa.column("weight", sa.Float()),
                       sa.column("created_at", sa.DateTime(timezone=True)))
    op.bulk_insert(tenants, [{"id": 1, "name": "default", "weight": 1.0,
                              "created_at": datetime.now(UTC)}])
    if op.get_bind().dialect.name == "postgresql":
        # The row above was given its id: the next tenant added takes 2.
        op.execute("SELECT setval(pg_get_serial_sequence('tenants', 'id'), 1)")
    op.create_table(
        "tenant_secrets",
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("current", sa.String(length=100), nullable=False),
        sa.Column("previous", sa.String(length=100), nullable=True),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name="fk_tenant_secrets_tenant_id_tenants"),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenant_secrets"),
    )
    op.create_table(
        "tenant_calls",
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "day", name="pk_tenant_calls"),
    )
    op.add_column("batches", sa.Column("tenant_id", BigId, server_default="1", nullable=False))
    op.add_column("admin_tokens", sa.Column("tenant_id", BigId, nullable=True))
    op.execute("UPDATE admin_tokens SET tenant_id = 1 WHERE scope = 'submit'")
    # The default fills every existing row; then the key is unique per tenant.
    op.add_column("jobs", sa.Column("tenant_id", BigId, server_default="1", nullable=False))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_jobs_tenant_id", ["tenant_id", "idempotency_key"])
    op.create_index("ix_jobs_due_tenant", "jobs", ["lane", "tenant_id", "due_at", "id"],
                    sqlite_where=sa.text("due_at IS NOT NULL"),
                    postgresql_where=sa.text("due_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_due_tenant", table_name="jobs")
    # Keys must be unique across tenants again: refused if two tenants share one.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_tenant_id", type_="unique")
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("tenant_id")
    op.drop_column("admin_tokens", "tenant_id")
    op.drop_column("batches", "tenant_id")
    op.drop_table("tenant_calls")
    op.drop_table("tenant_secrets")
    op.drop_table("tenants")
