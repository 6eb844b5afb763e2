"""The schedule of record: when each job is due, whether its message is out, who holds it.

The database is the queue. A job waiting for a worker is a row that is either *due*
(``due_at`` set: first attempt, or a retry after its backoff) or *out* (``enqueued_at`` set:
its message is in its lane's Redis list and no worker has taken it yet). A worker *claims*
a job when its message comes (``state`` running, ``lease_id`` its lease), and a job it gives
back is due again. Redis only ever carries the short window the feeder (feeder.py) keeps
topped up from the due rows, plus the onboarding jobs sent the moment they are submitted.

Every change of ``due_at``, ``enqueued_at`` and ``lease_id`` is one of the named statements
below (the others that write them end or restart a job: an answer's write in tasks.py,
cancel and retry-failed in batches.py, the inserts of submit.py and backfill.py), each
guarded by the state it expects, so two parties racing on one job (a worker
claiming it, the feeder marking it, a checker recovering it) never both win.

Order on the way out: a row is marked out, committed, then its message sent. A message that
never left (the sender died) is found by the feeder's lost-message check and the job is
due again. A message sent twice is harmless: only one claim succeeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from faceid_batch.models import Job, JobState, utcnow

_JOBS = Job.__table__
_J = _JOBS.c
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
_Executor = Session | Connection


def claim(db: _Executor, job_id: int, lease_id: str, now: datetime | None = None) -> bool:
    """Take the job for ``lease_id``; False if it is not waiting or not due yet."""
    now = now or utcnow()
    return db.execute(_CLAIM, {"of_job": job_id, "lease": lease_id, "now": now}).rowcount > 0


def reschedule(db: _Executor, job_id: int, lease_id: str, due: datetime,
               state: str = JobState.QUEUED.value) -> bool:
    """The holder gives the job back, due at ``due`` (``state``: queued or retrying).

    False if ``lease_id`` no longer holds it (it was recovered and taken by another)."""
    assert state in WAITING
    return db.execute(_RESCHEDULE, {"of_job": job_id, "lease": lease_id, "due": due,
                                    "to_state": state, "now": utcnow()}).rowcount > 0


def reschedule_columns(due: datetime, state: str) -> dict[str, object]:
    """The job columns of ``reschedule``, for a caller that writes them with an answer."""
    assert state in WAITING
    return {"state": state, "due_at": due, "enqueued_at": None}


def park(db: _Executor, job_id: int) -> bool:
    """A waiting job of a paused batch: neither due nor out until the batch resumes."""
    return db.execute(_JOBS.update().where(_J.id == job_id, _J.state.in_(WAITING)).values(
        state=JobState.PAUSED.value, due_at=None, enqueued_at=None, updated_at=utcnow(),
    )).rowcount > 0


def park_batch(db: _Executor, batch_id: int) -> int:
    """A paused batch's due jobs are parked (those out are parked by the worker they reach)."""
    return db.execute(_JOBS.update().where(
        _J.batch_id == batch_id, _J.state.in_(WAITING), _J.due_at.is_not(None),
    ).values(state=JobState.PAUSED.value, due_at=None, updated_at=utcnow())).rowcount


def unpark_batch(db: _Executor, batch_id: int) -> int:
    """A resumed batch's parked jobs are due again, in the order they were created."""
    return db.execute(_JOBS.update().where(
        _J.batch_id == batch_id, _J.state == JobState.PAUSED.value,
    ).values(**_queued_again())).rowcount


# -- the feeder's side -------------------------------------------------------------------
def mark_out(db: _Executor, ids: Sequence[int]) -> list[int]:
    """Mark due jobs as having a message out (before it is sent); return those marked."""
    now = utcnow()
    marked: list[int] = []
    for part in _chunks(ids):
        marked += db.scalars(_JOBS.update().where(
            _J.id.in_(part), _J.due_at.is_not(None), _J.state.in_(WAITING),
        ).values(due_at=None, enqueued_at=now).returning(_J.id)).all()
    return marked


def due_again(db: _Executor, ids: Iterable[int]) -> int:
    """Jobs whose message is gone (never sent, or lost with Redis) are due again, in the
    order they were created: they were at the front of the queue when they went out."""
    count = 0
    for part in _chunks(list(ids)):
        count += db.execute(_JOBS.update().where(
            _J.id.in_(part), _J.enqueued_at.is_not(None), _J.state.in_(WAITING),
        ).values(due_at=_J.created_at, enqueued_at=None, updated_at=utcnow())).rowcount
    return count


def out_before(db: _Executor, before: datetime, limit: int = 100_000) -> list[int]:
    """Jobs whose message went out before ``before`` and that no worker has taken."""
    return list(db.scalars(select(_J.id).where(
        _J.enqueued_at < before, _J.state.in_(WAITING)).limit(limit)))


def running_leases(db: _Executor) -> list[str]:
    """The leases that hold running jobs."""
    return [lease for lease in db.scalars(
        select(_J.lease_id).where(_J.state == RUNNING, _J.lease_id.is_not(None)).distinct()
    )]


def _queued_again() -> dict[str, object]:
    """A job back in the queue, due as of when it was created: ahead of the fresh rows that
    came after it (it was at the front when it went out, or was parked)."""
    return {"state": JobState.QUEUED.value, "due_at": _J.created_at, "enqueued_at": None,
            "updated_at": utcnow()}


def requeue_lease(db: _Executor, lease_id: str) -> list[int]:
    """Every running job of a lease that is gone is due again at once; return their ids."""
    return list(db.scalars(_JOBS.update().where(
        _J.state == RUNNING, _J.lease_id == lease_id,
    ).values(**_queued_again()).returning(_J.id)))


def requeue_stuck(db: _Executor, before: datetime) -> list[int]:
    """Running jobs not updated since ``before`` (their task hung, or they were taken by a
    worker older than leases) are due again; return their ids."""
    return list(db.scalars(_JOBS.update().where(
        _J.state == RUNNING, _J.updated_at < before,
    ).values(**_queued_again()).returning(_J.id)))


def make_due(db: _Executor, ids: Iterable[int]) -> int:
    """Waiting or parked jobs that must run (a paid answer waits for them) are due now."""
    count = 0
    for part in _chunks(list(ids)):
        count += db.execute(_JOBS.update().where(
            _J.id.in_(part), _J.state.in_((*WAITING, JobState.PAUSED.value)),
            _J.due_at.is_(None), _J.enqueued_at.is_(None),
        ).values(**_queued_again())).rowcount
    return count


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    ids = list(ids)
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]
