"""Typed SQLAlchemy 2.0 models: jobs, attempts, results, best frames, batches, webhooks.

Every schema change is an Alembic revision under ``migrations/``; a test checks that
these models and the migrations agree.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from faceid_batch.times import utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT keys on PostgreSQL; SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


def table(model: type[Base]) -> Table:
    """A model's table, for the Core statements of the hot paths (a declarative class's
    ``__table__`` is typed as any FromClause; it is this Table)."""
    return cast(Table, model.__table__)


class JobState(StrEnum):
    # Waiting for a worker: due in the database schedule (``due_at``), or its message is in
    # its lane's Redis list (``enqueued_at``).
    QUEUED = "queued"
    RUNNING = "running"  # a worker holds it (``lease_id``): staging or calling
    RETRYING = "retrying"  # waiting for the next attempt (``due_at``) after a transient failure
    COMPLETED = "completed"  # FaceID gave a final answer (pass or fail) — stored in results
    FAILED = "failed"  # no verdict: bad request, bad media, or attempts exhausted
    # Its batch is paused: not due and no message in Redis; ``batch resume`` makes it due.
    PAUSED = "paused"
    # Preflight (preflight.py) predicted a refusal the API would charge for: no call was
    # made; result_code holds the predicted code and ``jobs.preflight`` the findings.
    REFUSED = "refused"

    @classmethod
    def final(cls) -> tuple[JobState, ...]:
        """States of a job that has ended: it is never run again by itself."""
        return (cls.COMPLETED, cls.FAILED, cls.REFUSED)

    @classmethod
    def waiting(cls) -> tuple[JobState, ...]:
        """States of a job that a worker may take (claim) when its message comes."""
        return (cls.QUEUED, cls.RETRYING)

    @classmethod
    def not_called(cls) -> tuple[JobState, ...]:
        """States of a job no call has been made for yet: waiting, or parked."""
        return (*cls.waiting(), cls.PAUSED)


class Lane(StrEnum):
    ONBOARDING = "onboarding"  # a person is waiting
    BACKFILL = "backfill"  # bulk re-verification


class BatchState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # workers park its jobs instead of calling (batches.batch_gate)
    CANCELLED = "cancelled"  # jobs not yet called end failed with Local.BatchCancelled


def _stored(enum: type[StrEnum]) -> TypeDecorator[Any]:
    """A state or lane column: the enum in Python, its value as VARCHAR(16) in the table
    (no database enum type: a new state is a code change, not a schema change)."""
    return StoredEnum(enum)


class StoredEnum(TypeDecorator[Any]):
    """A StrEnum kept as its value in a VARCHAR(16); read back as the enum."""

    impl = String(16)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        # A string is bound as it is: a filter on a state that does not exist matches
        # nothing (the writers all write members of the enum).
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)


# The tenant every job, batch and submit token belongs to unless another is named
# (revision 0015 creates it with this id): a deployment with one tenant is this one.
DEFAULT_TENANT_ID = 1
DEFAULT_TENANT = "default"


class Tenant(Base):
    """A producer organisation (revision 0015): its own idempotency keys, webhook secrets,
    share of the onboarding lane, admission line and daily quota of calls."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # The FaceID regions its jobs may be verified in, and the accounts that may call for
    # them (names in the accounts file); NULL: no restriction (the deployment's own).
    regions: Mapped[list[str] | None] = mapped_column(JSON)
    accounts: Mapped[list[str] | None] = mapped_column(JSON)
    # New submissions are refused (429) once its calls today (UTC) reach this; NULL: none.
    max_calls_per_day: Mapped[int | None] = mapped_column(BigInteger)
    # Its share of the onboarding lane against the other tenants with work in it.
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantSecret(Base):
    """A tenant's webhook signing secrets (``whsec_``): the current one and, after a
    rotation, the one before it; callbacks are signed with both. Kept apart from
    ``tenants`` so no listing reads them: only the callback sender and the rotation do."""

    __tablename__ = "tenant_secrets"

    tenant_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    current: Mapped[str] = mapped_column(String(100))
    previous: Mapped[str | None] = mapped_column(String(100))
    rotated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantCalls(Base):
    """FaceID calls made for a tenant's jobs on one UTC day (revision 0015): added to in
    the transaction that records each call, read by the quota check (one row)."""

    __tablename__ = "tenant_calls"

    tenant_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD, UTC
    calls: Mapped[int] = mapped_column(BigInteger)


class Batch(Base):
    """A group of jobs enqueued from one manifest (a backfill), controlled as one."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The manifest's absolute path unless --name is given; a re-run with the same name
    # resumes this batch instead of starting another.
    name: Mapped[str] = mapped_column(String(500), index=True)
    manifest: Mapped[str | None] = mapped_column(Text)
    lane: Mapped[Lane] = mapped_column(_stored(Lane), default=Lane.BACKFILL)
    state: Mapped[BatchState] = mapped_column(_stored(BatchState), default=BatchState.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Its share of the feed against the other batches due at the same time (feeder.py).
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    # Figures of the last manifest run (job counts come from the jobs table).
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    rows_accepted: Mapped[int] = mapped_column(Integer, default=0)
    rows_known: Mapped[int] = mapped_column(Integer, default=0)
    rows_bad: Mapped[int] = mapped_column(Integer, default=0)
    enqueue_started_at: Mapped[datetime | None]
    enqueue_finished_at: Mapped[datetime | None]
    # The SHA-256 of the manifest file it was read from (revision 0012): the end-of-run
    # report names it, so an auditor can tie the report to its input.
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    # The tenant whose jobs it holds (revision 0015).
    tenant_id: Mapped[int] = mapped_column(BigId, server_default=str(DEFAULT_TENANT_ID))


class Job(Base):
    __tablename__ = "jobs"
    # The admin filters (queries.py, revision 0005): a filter column then the id, so a
    # filtered page in id order (the default listing) reads only its own rows.
    __table_args__ = (
        Index("ix_jobs_batch_id_id", "batch_id", "id"),
        Index("ix_jobs_lane_id", "lane", "id"),
        Index("ix_jobs_result_code_id", "result_code", "id"),
        Index("ix_jobs_created_at_id", "created_at", "id"),
        # The schedule (revision 0008, feeder.py): only due rows are in these indexes, so a
        # backlog of millions costs the feeder one index seek per batch and per pick, and
        # finished jobs cost it nothing. ``_again``: jobs that ran before (retries,
        # recovered jobs), fed before a batch's fresh rows.
        Index("ix_jobs_due", "lane", "batch_id", "due_at", "id",
              sqlite_where=text("due_at IS NOT NULL"),
              postgresql_where=text("due_at IS NOT NULL")),
        Index("ix_jobs_due_again", "lane", "batch_id", "due_at", "id",
              sqlite_where=text("due_at IS NOT NULL AND started_at IS NOT NULL"),
              postgresql_where=text("due_at IS NOT NULL AND started_at IS NOT NULL")),
        # Jobs of no batch: PostgreSQL does not read ix_jobs_due in order past an IS NULL,
        # and would sort every such due row on each pick.
        Index("ix_jobs_due_no_batch", "lane", "due_at", "id",
              sqlite_where=text("due_at IS NOT NULL AND batch_id IS NULL"),
              postgresql_where=text("due_at IS NOT NULL AND batch_id IS NULL")),
        # Messages out in Redis and not yet taken: what the lost-message check reads.
        Index("ix_jobs_enqueued_at", "enqueued_at",
              sqlite_where=text("enqueued_at IS NOT NULL"),
              postgresql_where=text("enqueued_at IS NOT NULL")),
        # A batch's dashboard (admin/dashboard.py, revision 0012): its counts by state,
        # outcome, attempts and Sim in one index-only scan.
        Index("ix_jobs_batch_tally", "batch_id", "state", "result_code", "passed", "attempts",
              "sim"),
        # Every sort and filter of the admin listing (queries.py, revision 0013): a sort
        # column then the id; a descending sort on a nullable column reads an index in
        # ``(col IS NULL), col DESC, id DESC`` order (NULLs last on both backends).
        Index("ix_jobs_sim_id", "sim", "id"),
        Index("ix_jobs_sim_desc", text("(sim IS NULL)"), text("sim DESC"), text("id DESC")),
        Index("ix_jobs_passed_sim", "passed", text("(sim IS NULL)"), text("sim DESC"),
              text("id DESC")),
        Index("ix_jobs_state_id", "state", "id"),
        Index("ix_jobs_attempts_id", "attempts", "id"),
        Index("ix_jobs_finished_desc", text("(finished_at IS NULL)"), text("finished_at DESC"),
              text("id DESC")),
        Index("ix_jobs_passed_sim_id", "passed", "sim", "id"),
        Index("ix_jobs_code_desc", text("(result_code IS NULL)"), text("result_code DESC"),
              text("id DESC")),
        Index("ix_jobs_batch_finished", "batch_id", "finished_at"),
        # A key prefix as a range of this index, whatever the collation (bytes compared).
        Index("ix_jobs_key_pattern", "idempotency_key", "id",
              postgresql_ops={"idempotency_key": "varchar_pattern_ops"}),
        # A listing sorted by key (revision 0016).
        Index("ix_jobs_key_id", "idempotency_key", "id"),
        # Idempotency keys are per tenant (revision 0015); also the index of a tenant's jobs.
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_id"),
        # The onboarding lane's due jobs by tenant (feeder.py shares the lane by tenant).
        Index("ix_jobs_due_tenant", "lane", "tenant_id", "due_at", "id",
              sqlite_where=text("due_at IS NOT NULL"),
              postgresql_where=text("due_at IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    # The tenant it belongs to (revision 0015): its key is unique within the tenant.
    tenant_id: Mapped[int] = mapped_column(BigId, server_default=str(DEFAULT_TENANT_ID))
    lane: Mapped[Lane] = mapped_column(_stored(Lane), default=Lane.ONBOARDING)
    state: Mapped[JobState] = mapped_column(_stored(JobState), default=JobState.QUEUED,
                                            index=True)
    liveness_type: Mapped[str] = mapped_column(String(8))
    validate_data: Mapped[str | None] = mapped_column(String(32))
    # The FaceID region it is verified in (revision 0014); NULL: FACEID_REGION.
    region: Mapped[str | None] = mapped_column(String(32))
    # Where the media came from (a path, an http(s) URL without query string, or cos://).
    photo_source: Mapped[str] = mapped_column(Text)
    video_source: Mapped[str] = mapped_column(Text)
    photo_md5: Mapped[str | None] = mapped_column(String(32))
    video_md5: Mapped[str | None] = mapped_column(String(32))
    photo_key: Mapped[str | None] = mapped_column(String(512))
    video_key: Mapped[str | None] = mapped_column(String(512))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Tries at staging its media that failed (a source that did not answer, COS away):
    # bounded by STAGE_MAX_ATTEMPTS, then the job ends failed (revision 0011).
    stage_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result_code: Mapped[str | None] = mapped_column(String(80))
    passed: Mapped[bool | None] = mapped_column(Boolean)
    # The Sim of its verdict, a copy of results.sim (revision 0012) that the dashboard and
    # the listings sorted by Sim read without a join.
    sim: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    callback_url: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    # The schedule (schedule.py owns these three). ``due_at``: when the job is due to be
    # sent from the database, set only while it waits there (queued, or retrying after its
    # backoff). ``enqueued_at``: when its message was put in its lane's Redis list, set only
    # until a worker takes it. ``lease_id``: the worker lease (leases.py) that holds or last
    # held it; a running job whose lease is gone is made due again at once.
    due_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    lease_id: Mapped[str | None] = mapped_column(String(100))
    # The backfill batch the job came from, and the manifest line it was read from.
    batch_id: Mapped[int | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL"), index=True
    )
    batch_row: Mapped[int | None] = mapped_column(Integer)
    # Set by the retention purge (purge.py): media objects and best frame deleted, verdict kept.
    media_purged_at: Mapped[datetime | None]
    # Set by an erasure request (purge --job/--key): media, best frame and the biometric
    # columns (sources, MD5s, object keys, Sim) gone; the row, its verdict and audit kept.
    erased_at: Mapped[datetime | None]
    # Preflight findings (revision 0006): a list of {"rule", "code", "action", "detail"};
    # action "refuse" made the job REFUSED, "warn" only recorded it. NULL: no finding.
    preflight: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # The token that submitted it over the producer API (revision 0009): a ``submit`` token
    # sees only its own jobs. NULL: submitted another way (CLI, Python, a manifest).
    submitted_by: Mapped[int | None] = mapped_column(BigId, index=True)

    batch: Mapped[Batch | None] = relationship(lazy="raise")
    attempt_rows: Mapped[list[Attempt]] = relationship(
        back_populates="job", lazy="raise", order_by="Attempt.id"
    )
    result: Mapped[Result | None] = relationship(back_populates="job", lazy="raise")
    best_frame: Mapped[BestFrame | None] = relationship(back_populates="job", lazy="raise")


class Attempt(Base):
    """One row per API call, whatever its answer."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    # Indexed (revision 0007) for ``faceid-batch cost --since/--until``: calls by period.
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    http_status: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(64))
    code: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    # False for a RequestLimitExceeded answer: it is retried without using up an attempt.
    counted: Mapped[bool] = mapped_column(Boolean, default=True)
    # Whether Tencent bills this call (billing.py maps the answer's code; revision 0006).
    # NULL on rows written before 0006: ``faceid-batch cost`` maps their code then.
    billable: Mapped[bool | None] = mapped_column(Boolean)
    # The account (its name in the accounts file, or "default") and the region that served
    # the call (revision 0014); NULL on calls recorded before.
    account: Mapped[str | None] = mapped_column(String(64))
    region: Mapped[str | None] = mapped_column(String(32))

    job: Mapped[Job] = relationship(back_populates="attempt_rows", lazy="raise")


class Result(Base):
    """FaceID's final answer for a job (one per job)."""

    __tablename__ = "results"
    __table_args__ = (Index("ix_results_sim_job_id", "sim", "job_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    result: Mapped[str] = mapped_column(String(80))
    description: Mapped[str | None] = mapped_column(Text)
    sim: Mapped[float | None] = mapped_column(Float)
    request_id: Mapped[str | None] = mapped_column(String(64))
    passed: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="result", lazy="raise")


class BestFrame(Base):
    """The frame FaceID picked from the video, downloaded and MD5-checked."""

    __tablename__ = "best_frames"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    md5: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    object_key: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="best_frame", lazy="raise")


class BatchCalls(Base):
    """FaceID calls of a batch's jobs in one minute with one answer code (revision 0012):
    added to in the transaction that records each call (persist.py), read by the batch
    dashboard and the end-of-run report without touching the attempts."""

    __tablename__ = "batch_calls"

    batch_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    minute: Mapped[datetime] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(80), primary_key=True)
    billable: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    # The account that made them (call/accounts.py; "default" without an accounts file).
    account: Mapped[str] = mapped_column(String(64), primary_key=True, default="default",
                                         server_default="default")
    calls: Mapped[int] = mapped_column(Integer)
    # Summed over the calls: how long they waited for their rate-limit slot.
    waited_ms: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """One attempt to POST a job's outcome to its callback URL, whatever happened."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    message_id: Mapped[int | None] = mapped_column(BigId)  # webhook_messages.id

    job: Mapped[Job] = relationship(lazy="raise")


class MediaObject(Base):
    """The ledger of what the product wrote to COS: one row per object and job, written
    before the PUT, so the purge and an erasure find every object whatever way its job
    ended. ``job_id`` NULL: written for a submission that stored no job (yet, or ever: a
    request that failed or lost the race for its key), purged once old."""

    __tablename__ = "media_objects"
    __table_args__ = (
        Index("ix_media_objects_orphans", "written_at",
              sqlite_where=text("job_id IS NULL AND deleted_at IS NULL"),
              postgresql_where=text("job_id IS NULL AND deleted_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bucket: Mapped[str | None] = mapped_column(String(200))  # NULL: COS_BUCKET
    object_key: Mapped[str] = mapped_column(String(512), index=True)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    written_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]


class WebhookMessage(Base):
    """One completion callback to deliver: due while ``due_at`` is set, claimed by whoever
    is sending it until ``claimed_until`` (a claim that lapses makes it due again)."""

    __tablename__ = "webhook_messages"
    __table_args__ = (
        Index("ix_webhook_messages_due", "due_at", "id",
              sqlite_where=text("due_at IS NOT NULL"),
              postgresql_where=text("due_at IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    lane: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    due_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claim: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class DedupeHit(Base):
    """Submissions answered from an existing job instead of a new call (cost accounting).

    One row per duplicate ``submit`` and one row per manifest run (``count`` = its known
    rows), so a re-run of a 1M-row manifest writes one row, not a million.
    """

    __tablename__ = "dedupe_hits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(16))  # "submit" | "api" | "backfill"
    count: Mapped[int] = mapped_column(Integer, default=1)
    batch_id: Mapped[int | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL"), index=True
    )
    # The existing job a single duplicate resolved to (NULL for a manifest run's total).
    job_id: Mapped[int | None] = mapped_column(BigId)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))


class AdminToken(Base):
    """A named bearer token (admin service or producer API); only its SHA-256 is stored."""

    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # What it may do (revision 0009): "admin" (the admin service: listings, images, audit,
    # and every verification) or "submit" (the producer API: create verifications and read
    # the status and outcome of its own, nothing else).
    scope: Mapped[str] = mapped_column(String(16), default="admin", server_default="admin")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    # The tenant a submit token acts for (revision 0015); NULL: an admin token of every tenant.
    tenant_id: Mapped[int | None] = mapped_column(BigId)


class AccessAudit(Base):
    """One row per read of a job's media or best frame, by any surface. Append-only: the
    application never updates or deletes a row, and triggers (revision 0006) refuse it.

    No foreign key: an audit row outlives anything it names.
    """

    __tablename__ = "access_audit"
    __table_args__ = (Index("ix_access_audit_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)  # token name or cli:user@host
    token_id: Mapped[int | None] = mapped_column(BigId)
    surface: Mapped[str] = mapped_column(String(16))  # "web" | "api" | "cli"
    what: Mapped[str] = mapped_column(String(32))  # "best_frame" | "id_photo" | "video" | ...
    job_id: Mapped[int] = mapped_column(BigId)
    remote: Mapped[str | None] = mapped_column(String(200))  # client address or host
    detail: Mapped[str | None] = mapped_column(Text)


class BatchAction(Base):
    """Who acted on a batch (pause, resume, cancel, weight, retry, resend callbacks), from
    which surface, and what the action matched (revision 0012). Rows are only inserted."""

    __tablename__ = "batch_actions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))  # token name or cli:user@host
    token_id: Mapped[int | None] = mapped_column(BigId)
    surface: Mapped[str] = mapped_column(String(16))  # "web" | "api" | "cli"
    action: Mapped[str] = mapped_column(String(32))
    batch_id: Mapped[int] = mapped_column(BigId, index=True)
    remote: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[str | None] = mapped_column(Text)


class AdminSession(Base):
    """A login on the review pages. The cookie holds a random id; this row only its SHA-256,
    and the SHA-256 of the token that opened it, which every request checks again (so a
    revoked token, or a changed ADMIN_TOKEN, ends the session at once)."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]  # logout
