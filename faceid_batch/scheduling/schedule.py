"""The schedule of record: when each job is due, whether its message is out, who holds it.

The database is the queue. A job waiting for a worker is a row that is either *due*
(``due_at`` set: first attempt, or a retry after its backoff) or *out* (``enqueued_at`` set:
its message is in its lane's Redis list and no worker has taken it yet). A worker *claims*
a job when its message comes (``state`` running, ``lease_id`` its lease), and a job it gives
back is due again. Redis only ever carries the short window the feeder (feeder.py) keeps
topped up from the due rows, plus the onboarding jobs sent the moment they are submitted.

Every change of a job's state is built here: the guarded statements of the schedule
(claim, reschedule, park, mark out, due again ...), and the columns of a new job, a final
state (completed, failed, refused, cancelled) and a restart, which their callers write in
the transaction that needs them (an answer with its attempt, a batch's cancel). Each
statement is guarded by the state it expects, so two parties racing on one job (a worker
claiming it, the feeder marking it, a checker recovering it) never both win.

Order on the way out: a row is marked out, committed, then its message sent. A message that
never left (the sender died) is found by the feeder's lost-message check and the job is
due again. A message sent twice is harmless: only one claim succeeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, exists, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from faceid_batch.db import affected
from faceid_batch.models import Batch, BatchState, Job, JobState, table
from faceid_batch.times import utcnow

_JOBS = table(Job)
_J = _JOBS.c
_B = table(Batch).c
WAITING = JobState.waiting()
RUNNING = JobState.RUNNING.value
CHUNK = 1000

# A job takes a worker's claim when its message comes: it must be waiting, and due now (a
# retry whose backoff has not run out is not taken by a stale message) or out (no due time).
_CLAIM = _JOBS.update().where(
    _J.id == bindparam("of_job"), _J.state.in_(WAITING),
    or_(_J.due_at.is_(None), _J.due_at <= bindparam("now")),
).values(
    state=RUNNING, lease_id=bindparam("lease"), due_at=None, enqueued_at=None,
    started_at=func.coalesce(_J.started_at, bindparam("now")), updated_at=bindparam("now"),
)
# What the holder of a job does with it: only the lease that holds it may move it.
_HELD = and_(_J.id == bindparam("of_job"), _J.state == RUNNING,
             _J.lease_id == bindparam("lease"))
_RESCHEDULE = _JOBS.update().where(_HELD).values(
    state=bindparam("to_state"), due_at=bindparam("due"), enqueued_at=None,
    updated_at=bindparam("now"),
)
Executor = Session | Connection
# What a worker's run comes to when its lease no longer held the job at its write (another
# worker took it over, or it ended): nothing of the run was written to the job.
LOST = "lost"


def claim(db: Executor, job_id: int, lease_id: str, now: datetime | None = None) -> bool:
    """Take the job for ``lease_id``; False if it is not waiting or not due yet."""
    now = now or utcnow()
    return affected(db.execute(_CLAIM, {"of_job": job_id, "lease": lease_id, "now": now})) > 0


def _waiting(state: JobState) -> JobState:
    if state not in WAITING:
        raise ValueError(f"a job given back waits: queued or retrying, not {state}")
    return state


def reschedule(db: Executor, job_id: int, lease_id: str, due: datetime,
               state: JobState = JobState.QUEUED) -> bool:
    """The holder gives the job back, due at ``due`` (``state``: queued or retrying).

    False if ``lease_id`` no longer holds it (it was recovered and taken by another)."""
    return affected(db.execute(_RESCHEDULE, {
        "of_job": job_id, "lease": lease_id, "due": due, "to_state": _waiting(state),
        "now": utcnow()})) > 0


def reschedule_columns(due: datetime, state: JobState) -> dict[str, object]:
    """The job columns of ``reschedule``, for a caller that writes them with an answer."""
    return {"state": _waiting(state), "due_at": due, "enqueued_at": None}


def _batch_paused(batch_id: int | Any) -> Any:
    return exists().where(_B.id == batch_id, _B.state == BatchState.PAUSED.value)


def _hold_batch(db: Executor, batch_id: int) -> None:
    """On PostgreSQL, share-lock the batch's row until this transaction ends, so a resume
    (which updates it) cannot commit between our reading "paused" and our park; SQLite
    runs each statement under its database lock already."""
    dialect = db.dialect if isinstance(db, Connection) else db.get_bind().dialect
    if dialect.name == "postgresql":
        db.execute(select(_B.id).where(_B.id == batch_id).with_for_update(read=True))


def park(db: Executor, job_id: int, batch_id: int) -> bool:
    """A waiting job of a paused batch: neither due nor out until the batch resumes. Only
    while the database says the batch is paused: a park that races a resume either
    happens before it (and the resume makes the job due) or not at all."""
    _hold_batch(db, batch_id)
    return affected(db.execute(_JOBS.update().where(
        _J.id == job_id, _J.state.in_(WAITING), _batch_paused(batch_id),
    ).values(state=JobState.PAUSED.value, due_at=None, enqueued_at=None,
             updated_at=utcnow()))) > 0


def park_batch(db: Executor, batch_id: int) -> int:
    """A paused batch's due jobs are parked (those out are parked by the worker they reach),
    while the batch is paused (see park)."""
    _hold_batch(db, batch_id)
    return affected(db.execute(_JOBS.update().where(
        _J.batch_id == batch_id, _J.state.in_(WAITING), _J.due_at.is_not(None),
        _batch_paused(batch_id),
    ).values(state=JobState.PAUSED.value, due_at=None, updated_at=utcnow())))


def unpark_batch(db: Executor, batch_id: int) -> int:
    """A resumed batch's parked jobs are due again, in the order they were created."""
    return affected(db.execute(_JOBS.update().where(
        _J.batch_id == batch_id, _J.state == JobState.PAUSED.value,
    ).values(**_queued_again())))


# -- the feeder's side -------------------------------------------------------------------
def mark_out(db: Executor, ids: Sequence[int]) -> list[int]:
    """Mark due jobs as having a message out (before it is sent); return those marked."""
    now = utcnow()
    marked: list[int] = []
    for part in _chunks(ids):
        marked += db.scalars(_JOBS.update().where(
            _J.id.in_(part), _J.due_at.is_not(None), _J.state.in_(WAITING),
        ).values(due_at=None, enqueued_at=now).returning(_J.id)).all()
    return marked


def due_again(db: Executor, ids: Iterable[int]) -> int:
    """Jobs whose message is gone (never sent, or lost with Redis) are due again, in the
    order they were created: they were at the front of the queue when they went out."""
    count = 0
    for part in _chunks(list(ids)):
        count += affected(db.execute(_JOBS.update().where(
            _J.id.in_(part), _J.enqueued_at.is_not(None), _J.state.in_(WAITING),
        ).values(due_at=_J.created_at, enqueued_at=None, updated_at=utcnow())))
    return count


def out_before(db: Executor, before: datetime, limit: int = 100_000) -> list[int]:
    """Jobs whose message went out before ``before`` and that no worker has taken."""
    return list(db.scalars(select(_J.id).where(
        _J.enqueued_at < before, _J.state.in_(WAITING)).limit(limit)))


def running_leases(db: Executor) -> list[str]:
    """The leases that hold running jobs."""
    return [lease for lease in db.scalars(
        select(_J.lease_id).where(_J.state == RUNNING, _J.lease_id.is_not(None)).distinct()
    )]


def _queued_again() -> dict[str, object]:
    """A job back in the queue, due as of when it was created: ahead of the fresh rows that
    came after it (it was at the front when it went out, or was parked)."""
    return {"state": JobState.QUEUED.value, "due_at": _J.created_at, "enqueued_at": None,
            "updated_at": utcnow()}


def requeue_lease(db: Executor, lease_id: str) -> list[int]:
    """Every running job of a lease that is gone is due again at once; return their ids."""
    return list(db.scalars(_JOBS.update().where(
        _J.state == RUNNING, _J.lease_id == lease_id,
    ).values(**_queued_again()).returning(_J.id)))


STUCK_CODE = "Local.StuckInWorker"


def requeue_stuck(db: Executor, before: datetime, max_tries: int) -> tuple[list[int], list[int]]:
    """Running jobs not updated since ``before`` (their task hung, or they were taken by a
    worker older than leases) are due again, each such hang counted as a try at staging;
    a job whose tries reach ``max_tries`` ends failed instead, so a job that hangs every
    worker it meets still ends. Return (ids due again, ids ended)."""
    hung = and_(_J.state == RUNNING, _J.updated_at < before)
    tried = _J.stage_attempts + 1
    ended = list(db.scalars(_JOBS.update().where(hung, tried >= max_tries).values(
        **failed_columns(STUCK_CODE, "the job hung in a worker every time it ran"),
        stage_attempts=tried, updated_at=utcnow()).returning(_J.id)))
    again = list(db.scalars(_JOBS.update().where(hung).values(
        **_queued_again(), stage_attempts=tried).returning(_J.id)))
    return again, ended


def make_due(db: Executor, ids: Iterable[int]) -> int:
    """Waiting or parked jobs that must run (a paid answer waits for them) are due now."""
    count = 0
    for part in _chunks(list(ids)):
        count += affected(db.execute(_JOBS.update().where(
            _J.id.in_(part), _J.state.in_(JobState.not_called()),
            _J.due_at.is_(None), _J.enqueued_at.is_(None),
        ).values(**_queued_again())))
    return count


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    ids = list(ids)
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


# -- new jobs, final states and restarts: the columns their callers write ------------------
def waiting_columns(*, out: bool, paused: bool = False,
                    now: datetime | None = None) -> dict[str, Any]:
    """A job that is to run: out (its message is sent right after the commit), due now (the
    feeder sends it in its turn) or parked (its batch is paused). A row that had an outcome
    (a refusal checked again, a failure retried) also takes OUTCOME_CLEARED."""
    now = now or utcnow()
    return {
        "state": JobState.PAUSED.value if paused else JobState.QUEUED.value,
        "due_at": None if paused or out else now,
        "enqueued_at": now if out and not paused else None,
    }


# The outcome columns of a job that runs again; a new row has them NULL already.
# A job that runs again has media again: its purge and erasure marks go, so the purge takes
# its new objects when it ends.
OUTCOME_CLEARED: dict[str, Any] = {"result_code": None, "passed": None, "sim": None,
                                   "error_message": None,
                                   "finished_at": None, "stage_attempts": 0,
                                   "media_purged_at": None, "erased_at": None}


def restarted_columns(*, paused: bool, now: datetime | None = None) -> dict[str, Any]:
    """A failed job run again from its first attempt (retry-failed); the old attempts stay
    in the attempts table for the audit."""
    return {**waiting_columns(out=False, paused=paused, now=now), **OUTCOME_CLEARED,
            "attempts": 0}


def completed_columns(code: str, passed: bool, sim: float | None = None) -> dict[str, Any]:
    """A job whose answer (a verdict, or Success with its Sim) is stored."""
    return {"state": JobState.COMPLETED.value, "result_code": code, "passed": passed,
            "sim": sim,
            "error_message": None, "finished_at": utcnow(), "due_at": None,
            "enqueued_at": None}


def failed_columns(code: str, message: str) -> dict[str, Any]:
    """Final without a verdict: a bad request or media, attempts used up, a cancel."""
    # Neither due nor out: a final job leaves the schedule (it may have been made due
    # again while its answer was on the way; see _OURS).
    return {"state": JobState.FAILED.value, "result_code": code, "passed": None, "sim": None,
            "error_message": message[:2000], "finished_at": utcnow(), "due_at": None,
            "enqueued_at": None}


def refused_columns(code: str, reason: str) -> dict[str, Any]:
    """Final without a call: preflight predicted the API's refusal ``code``."""
    return {"state": JobState.REFUSED.value, "result_code": code, "passed": None, "sim": None,
            "error_message": reason[:2000], "finished_at": utcnow(), "due_at": None,
            "enqueued_at": None}


def cancelled_columns(code: str, message: str) -> dict[str, Any]:
    """A waiting job closed by its batch's cancel: failed, neither due nor out."""
    columns = failed_columns(code, message)
    return {**columns, "updated_at": columns["finished_at"], "due_at": None,
            "enqueued_at": None}


# -- the statements that write them -----------------------------------------------------
# Every write by the worker holding a job names its lease (BullMQ's lock token): a worker
# whose lease lapsed, and whose job another worker has claimed since, writes nothing, and
# learns it. A job made due again when the lease was judged gone, and not claimed since,
# still names that lease: its holder's answer is written, and it is not paid for again.
_OURS = and_(_J.id == bindparam("of_job"), _J.lease_id == bindparam("lease"),
             _J.state.in_((RUNNING, *WAITING, JobState.PAUSED.value)))
_WRITE = _JOBS.update().where(_OURS)
_REFUSED = JobState.REFUSED.value


def write(db: Executor, job_id: int, lease_id: str, columns: dict[str, Any]) -> bool:
    """Write ``columns`` (built by the functions above) to a job ``lease_id`` holds: an
    answer's write, in the transaction that holds its attempt. False if another worker has
    claimed the job since, or it ended (nothing was written)."""
    return affected(db.execute(_WRITE, {**columns, "of_job": job_id, "lease": lease_id})) > 0


def fail(db: Executor, job_id: int, lease_id: str, code: str, message: str) -> bool:
    """End a job this worker holds without a verdict (its media was refused, or staging
    failed too often); False if it no longer holds it."""
    return write(db, job_id, lease_id, {**failed_columns(code, message), "updated_at": utcnow()})


def refuse(db: Executor, job_id: int, lease_id: str, code: str, reason: str,
           findings: list[dict[str, Any]]) -> bool:
    """End a job without a call: preflight predicted the API's refusal ``code``."""
    return write(db, job_id, lease_id, {**refused_columns(code, reason), "preflight": findings,
                                        "updated_at": utcnow()})


def staging_failed(db: Executor, job_id: int, lease_id: str, due: datetime) -> bool:
    """The holder could not stage the job's media: one more staging attempt is counted and
    the job is due again at ``due`` (retrying)."""
    return affected(db.execute(_STAGING_FAILED, {"of_job": job_id, "lease": lease_id, "due": due,
                                        "now": utcnow()})) > 0


_STAGING_FAILED = _JOBS.update().where(_OURS).values(
    state=JobState.RETRYING.value, due_at=bindparam("due"), enqueued_at=None,
    stage_attempts=_J.stage_attempts + 1, updated_at=bindparam("now"),
)


def recheck_refused(db: Executor, job_id: int, columns: dict[str, Any]) -> bool:
    """A refused job submitted again (a refusal cost nothing): rewrite it from the new
    submission; only a row still refused is, so two re-submissions racing send it once."""
    # The entity's update: ``columns`` name attributes (``meta``), as a new row's do.
    return affected(db.execute(update(Job).where(Job.id == job_id, Job.state == _REFUSED)
                      .values(**columns, updated_at=utcnow()))) > 0


def cancel(db: Executor, job_id: int, code: str, message: str) -> bool:
    """Close one waiting job of a cancelled batch; False if it was no longer waiting."""
    return affected(db.execute(_JOBS.update().where(_J.id == job_id, _J.state.in_(WAITING))
                      .values(**cancelled_columns(code, message)))) > 0


def cancel_batch(db: Executor, batch_id: int, code: str, message: str) -> int:
    """Close every waiting job of a cancelled batch (jobs calling now keep their answer)."""
    return affected(db.execute(_JOBS.update().where(_J.batch_id == batch_id, _J.state.in_(WAITING))
                      .values(**cancelled_columns(code, message))))


def failed_of_batch(batch_id: int, *, except_code: str,
                    code: str | None = None) -> ColumnElement[bool]:
    """The jobs ``restart_failed`` runs again: the batch's failed jobs, except those that
    failed with ``except_code``; only those that failed with ``code`` when it is given. A
    dry run counts with the same condition, so it counts what the restart takes."""
    chosen = [_J.batch_id == batch_id, _J.state == JobState.FAILED.value,
              or_(_J.result_code.is_(None), _J.result_code != except_code)]
    if code is not None:
        chosen.append(_J.result_code == code)
    return and_(*chosen)


def restart_failed(db: Executor, batch_id: int, *, paused: bool, except_code: str,
                   code: str | None = None) -> int:
    """Run a batch's failed jobs again from their first attempt, except those that failed
    with ``except_code`` (closed by a cancel), only those that failed with ``code`` when it
    is given; parked when the batch is paused."""
    now = utcnow()
    return affected(db.execute(_JOBS.update().where(
        failed_of_batch(batch_id, except_code=except_code, code=code),
    ).values(**restarted_columns(paused=paused, now=now), updated_at=now)))


def insert_jobs(conn: Connection, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert job rows in one statement; return {idempotency key: id} of the rows inserted.

    A key inserted meanwhile by another producer is skipped (ON CONFLICT DO NOTHING), so the
    caller can count it as already known instead of losing the whole chunk to one conflict.
    """
    if not rows:
        return {}
    dialect = conn.dialect.name
    new: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        new = postgresql.insert(Job).on_conflict_do_nothing(
            index_elements=["tenant_id", "idempotency_key"])
    elif dialect == "sqlite":
        new = sqlite.insert(Job).on_conflict_do_nothing(
            index_elements=["tenant_id", "idempotency_key"])
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise RuntimeError(f"bulk insert is not written for {dialect}")
    now = utcnow()
    values = [{"created_at": now, "updated_at": now, "attempts": 0, **row} for row in rows]
    stmt = new.returning(Job.idempotency_key, Job.id)
    return {key: job_id for key, job_id in conn.execute(stmt, values)}


# The batches with due jobs in a lane, one index seek per batch (a loose index scan over
# ix_jobs_due), so a backlog of millions in a few batches costs a few seeks.
# Every step is the same seek (batch ids start at 1), so the planner takes ix_jobs_due for
# all of them; a first step written "batch_id IS NOT NULL" would be read through
# ix_jobs_batch_id past every finished job of the first batch.
_JOBS_C = table(Job).c
_DUE_BATCHES = text("""
WITH RECURSIVE due(b) AS (
  SELECT CAST(0 AS BIGINT)
  UNION ALL
  SELECT (SELECT batch_id FROM jobs WHERE lane = :lane AND due_at IS NOT NULL
          AND batch_id > due.b ORDER BY batch_id LIMIT 1) FROM due WHERE due.b IS NOT NULL
)
SELECT b FROM due WHERE b IS NOT NULL AND b > 0
""")
_NO_BATCH_DUE = select(_JOBS_C.id).where(
    _JOBS_C.lane == bindparam("lane"), _JOBS_C.batch_id.is_(None),
    _JOBS_C.due_at.is_not(None)).limit(1)


def due_weights(session: Session, lane: str) -> dict[int | None, float]:
    """The keys the feeder shares ``lane`` between, by weight: each active batch with due
    jobs in it (its weight), and None (weight 1) when jobs of no batch are due in it."""
    ids = list(session.scalars(_DUE_BATCHES, {"lane": lane}))
    keys: dict[int | None, float] = {}
    if ids:
        for batch_id, state, weight in session.execute(
                select(Batch.id, Batch.state, Batch.weight).where(Batch.id.in_(ids))):
            if state == BatchState.ACTIVE.value:
                keys[batch_id] = weight if weight and weight > 0 else 1.0
    if session.scalar(_NO_BATCH_DUE, {"lane": lane}) is not None:
        keys[None] = 1.0
    return keys
