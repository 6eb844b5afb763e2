"""Batch control: pause, resume, cancel, retry-failed, weight, status; and the worker's gate.

The database holds each batch's state. Redis holds a copy that workers read: one hash,
``faceid:batches:control`` (batch id -> ``paused`` | ``cancelled``), so checking a job costs
one HMGET and no query. If Redis lost the hash (a restart without persistence), the first
worker to notice rebuilds it from the database (the ``_synced`` field marks a built hash).

Every change takes effect at the feeder's next round (feeder.py), for everything not yet in
flight: a paused or cancelled batch is not fed. ``pause`` parks the batch's waiting jobs
(state ``paused``: neither due nor out) and a worker parks any whose message was already
out; ``resume`` makes them due again. ``cancel`` closes the jobs not yet called as
``failed`` with ``Local.BatchCancelled``. ``weight`` sets the batch's share of the feed
against the other batches due at the same time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from faceid_batch.db import session_scope
from faceid_batch.models import Batch, BatchState, Job, JobState
from faceid_batch.resources import Resources
from faceid_batch.scheduling import answers, schedule
from faceid_batch.settings import Settings
from faceid_batch.times import as_aware, utcnow

CONTROL_KEY = "faceid:batches:control"
SYNCED = "_synced"
CANCELLED_CODE = "Local.BatchCancelled"


class BatchError(ValueError):
    """The batch does not exist or cannot do what was asked; the message says why."""


# -- the worker side -------------------------------------------------------------------
def batch_gate(res: Resources, session: Session, job_id: int, batch_id: int) -> str | None:
    """None if the job may run now; otherwise park or close it and say what it became.

    Called in the worker's session before it claims the job; the change is committed with
    it. One Redis round trip (two when the batch is not active). A job with a paid answer
    parked in Redis always runs: that answer is written before anything else.
    """
    control = _control_state(res.redis, res.settings.database_url, batch_id)
    if control not in (BatchState.PAUSED.value, BatchState.CANCELLED.value):
        return None
    if answers.is_parked(res.redis, job_id):
        return None
    if control == BatchState.PAUSED.value:
        if schedule.park(session, job_id, batch_id):
            return JobState.PAUSED.value
        # The database says the batch is no longer paused (a resume committed): the job
        # runs, and the stale copy in Redis is put right.
        publish_state(res.redis, res.settings.database_url, batch_id)
        return None
    schedule.cancel(session, job_id, CANCELLED_CODE, _cancelled_why(batch_id))
    return JobState.FAILED.value


def _cancelled_why(batch_id: int) -> str:
    return f"batch {batch_id} was cancelled before this job was called"


def _control_state(client: redis.Redis, database_url: str, batch_id: int) -> str | None:
    synced, state = client.hmget(CONTROL_KEY, SYNCED, str(batch_id))
    if synced is None:
        return sync_control(client, database_url).get(batch_id)
    return state.decode() if isinstance(state, bytes) else state


def sync_control(client: redis.Redis, database_url: str) -> dict[int, BatchState]:
    """Rebuild the Redis copy of paused/cancelled batches from the database; return it."""
    with session_scope(database_url) as session:
        states = {batch_id: state for batch_id, state in session.execute(
            select(Batch.id, Batch.state).where(Batch.state != BatchState.ACTIVE.value)
        )}
    pipe = client.pipeline()
    pipe.delete(CONTROL_KEY)
    pipe.hset(CONTROL_KEY, mapping={SYNCED: "1", **{str(k): v for k, v in states.items()}})
    pipe.execute()
    return states


def publish_state(client: redis.Redis, database_url: str, batch_id: int) -> None:
    """Make workers see the batch's state as the database has it now (read afresh, so two
    changes racing leave the later one in Redis, not whichever published last)."""
    if not client.hexists(CONTROL_KEY, SYNCED):
        sync_control(client, database_url)  # already reads the new state
        return
    with session_scope(database_url) as session:
        state = session.scalar(select(Batch.state).where(Batch.id == batch_id))
    if state is None or state == BatchState.ACTIVE.value:
        client.hdel(CONTROL_KEY, str(batch_id))
    else:
        client.hset(CONTROL_KEY, str(batch_id), state)


def control_state(client: redis.Redis, database_url: str, batch_id: int) -> str:
    """The batch's state as workers see it (``active`` when not flagged)."""
    return _control_state(client, database_url, batch_id) or BatchState.ACTIVE.value


# -- the operator side -----------------------------------------------------------------
def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def get_batch(settings: Settings, batch_id: int) -> Batch:
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise BatchError(f"batch {batch_id}: no such batch")
        return batch


def _set_state(session: Session, batch_id: int, state: BatchState) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise BatchError(f"batch {batch_id}: no such batch")
    if batch.state == BatchState.CANCELLED.value:
        raise BatchError(f"batch {batch_id} is cancelled; a cancelled batch stays so")
    batch.state = state
    batch.updated_at = utcnow()
    session.flush()
    return batch


def pause(settings: Settings, batch_id: int) -> int:
    """Pause a batch; return how many of its waiting jobs were parked at once.

    The feeder stops feeding it at its next round; a worker parks any job whose message
    was already out (``batch_gate``); jobs already running finish.
    """
    with session_scope(settings.database_url) as session:
        _set_state(session, batch_id, BatchState.PAUSED)
        parked = schedule.park_batch(session, batch_id)
    publish_state(_redis(settings), settings.database_url, batch_id)
    return parked


def resume(settings: Settings, batch_id: int) -> int:
    """Resume a batch: every parked job of it is due again; return how many.

    No park can come after it: a worker parks a job only while the database says the batch
    is paused (schedule.park), so one that read "paused" late leaves the job to run.
    """
    with session_scope(settings.database_url) as session:
        _set_state(session, batch_id, BatchState.ACTIVE)
        due = schedule.unpark_batch(session, batch_id)
    publish_state(_redis(settings), settings.database_url, batch_id)
    return due


def cancel(settings: Settings, batch_id: int) -> int:
    """Cancel a batch: every job not yet called ends failed; return how many were closed.

    Jobs already calling FaceID finish and keep their answer (it is paid for).
    """
    with session_scope(settings.database_url) as session:
        _set_state(session, batch_id, BatchState.CANCELLED)
        closed = schedule.cancel_batch(session, batch_id, CANCELLED_CODE,
                                       _cancelled_why(batch_id))
    publish_state(_redis(settings), settings.database_url, batch_id)
    return closed


def retry_failed(settings: Settings, batch_id: int) -> int:
    """Queue the batch's failed jobs again with fresh attempts; return how many.

    Jobs closed by a cancel are not retried. In a paused batch they are parked until resume.
    """
    batch = get_batch(settings, batch_id)
    if batch.state == BatchState.CANCELLED.value:
        raise BatchError(f"batch {batch_id} is cancelled; nothing is retried in it")
    paused = batch.state == BatchState.PAUSED.value
    with session_scope(settings.database_url) as session:
        return schedule.restart_failed(session, batch_id, paused=paused,
                                       except_code=CANCELLED_CODE)


def check_weight(weight: float) -> float:
    """A batch's weight: above 0, at most a million."""
    if not 0 < weight <= 1_000_000:
        raise BatchError(f"weight {weight!r}: must be a number above 0 (at most 1000000)")
    return weight


def set_weight(settings: Settings, batch_id: int, weight: float) -> Batch:
    """Set the batch's share of the feed (takes effect within a second)."""
    check_weight(weight)
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise BatchError(f"batch {batch_id}: no such batch")
        batch.weight = weight
        batch.updated_at = utcnow()
        return batch


# -- status -----------------------------------------------------------------------------
@dataclass
class BatchStatus:
    """A batch's progress: job counts by state and outcome, rate and ETA."""

    id: int
    name: str
    lane: str
    state: str
    created_at: datetime
    rows_read: int
    rows_accepted: int
    rows_known: int
    rows_bad: int
    enqueuing: bool
    weight: float = 1.0
    by_state: dict[str, int] = field(default_factory=dict)
    passed: int = 0
    not_passed: int = 0
    failed_by_code: dict[str, int] = field(default_factory=dict)
    rate: float = 0.0  # jobs finished per second, recently
    eta_seconds: float | None = None

    @property
    def total(self) -> int:
        return sum(self.by_state.values())

    @property
    def done(self) -> int:
        return sum(self.by_state.get(s, 0) for s in JobState.final())

    @property
    def remaining(self) -> int:
        return self.total - self.done


RATE_WINDOW = timedelta(seconds=60)


def status(settings: Settings, batch_id: int) -> BatchStatus:
    """Counts by state and outcome for the batch, with the recent rate and an ETA."""
    now = utcnow()
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise BatchError(f"batch {batch_id}: no such batch")
        st = BatchStatus(
            id=batch.id, name=batch.name, lane=batch.lane, state=batch.state,
            created_at=batch.created_at, rows_read=batch.rows_read,
            rows_accepted=batch.rows_accepted, rows_known=batch.rows_known,
            rows_bad=batch.rows_bad,
            enqueuing=batch.enqueue_started_at is not None and batch.enqueue_finished_at is None,
            weight=batch.weight,
        )
        rows = session.execute(
            select(Job.state, Job.passed, Job.result_code, func.count())
            .where(Job.batch_id == batch_id)
            .group_by(Job.state, Job.passed, Job.result_code)
        ).all()
        for state, passed, code, n in rows:
            st.by_state[state] = st.by_state.get(state, 0) + n
            if state == JobState.COMPLETED.value:
                if passed:
                    st.passed += n
                else:
                    st.not_passed += n
            elif state == JobState.FAILED.value:
                key = code or "(no code)"
                st.failed_by_code[key] = st.failed_by_code.get(key, 0) + n
        first_start, recent = session.execute(
            select(func.min(Job.started_at),
                   func.count().filter(Job.finished_at >= now - RATE_WINDOW))
            .where(Job.batch_id == batch_id)
        ).one()
    if first_start is not None and recent:
        first_start = as_aware(first_start)
        window = min(RATE_WINDOW.total_seconds(), max(1.0, (now - first_start).total_seconds()))
        st.rate = recent / window
    if st.rate > 0 and st.state == BatchState.ACTIVE.value:
        st.eta_seconds = st.remaining / st.rate
    elif st.remaining == 0:
        st.eta_seconds = 0.0
    return st


def format_status(st: BatchStatus) -> str:
    """Plain text for ``faceid-batch batch status``."""
    lines = [
        f"batch {st.id}  {st.name}",
        f"  state {st.state}, lane {st.lane}, weight {st.weight:g}, "
        f"created {st.created_at:%Y-%m-%d %H:%M:%S}"
        + ("  (manifest still being enqueued)" if st.enqueuing else ""),
        f"  manifest: {st.rows_read} rows read, {st.rows_accepted} accepted, "
        f"{st.rows_known} already known, {st.rows_bad} bad",
        f"  jobs: {st.total} total, {st.done} done, {st.remaining} to go",
        "  by state: " + (", ".join(f"{k} {v}" for k, v in sorted(st.by_state.items()))
                          or "(no jobs)"),
        f"  outcomes: {st.passed} passed, {st.not_passed} not passed (a verdict), "
        f"{sum(st.failed_by_code.values())} failed without a verdict",
    ]
    for code, n in sorted(st.failed_by_code.items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"    {code}: {n}")
    lines.append(f"  rate: {st.rate:.1f} jobs/s over the last minute; ETA {format_eta(st)}")
    return "\n".join(lines)


def format_eta(st: BatchStatus) -> str:
    if st.remaining == 0:
        return "done"
    if st.state != BatchState.ACTIVE.value:
        return f"none ({st.state})"
    if st.eta_seconds is None:
        return "unknown (nothing finished in the last minute)"
    return str(timedelta(seconds=int(st.eta_seconds)))


def watch(settings: Settings, batch_id: int, render: Callable[[BatchStatus], None],
          interval: float = 2.0) -> BatchStatus:
    """Call ``render`` with fresh status until the batch has nothing left to do."""
    while True:
        st = status(settings, batch_id)
        render(st)
        if (st.remaining == 0 and not st.enqueuing) or st.state == BatchState.CANCELLED.value:
            return st
        time.sleep(interval)
