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

``retry_plan`` / ``retry`` and ``resend_plan`` / ``resend_callbacks`` act on a filtered
subset of a batch, with a dry run first: the plan counts with the very condition the action
writes with, and the action, given the plan's count (``expect``), refuses if the subset has
changed since. Each action is one transaction with its ``batch_actions`` row (who did it,
from which surface, what it matched): the row is written if and only if the change is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import ColumnElement, and_, exists, func, select
from sqlalchemy.orm import Session

from faceid_batch.db import session_scope
from faceid_batch.models import (
    Batch,
    BatchAction,
    BatchCalls,
    BatchState,
    Job,
    JobState,
    WebhookMessage,
)
from faceid_batch.resources import Resources
from faceid_batch.scheduling import answers, callbacks, schedule
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


def pause(settings: Settings, batch_id: int, by: Actor | None = None) -> int:
    """Pause a batch; return how many of its waiting jobs were parked at once.

    The feeder stops feeding it at its next round; a worker parks any job whose message
    was already out (``batch_gate``); jobs already running finish. With ``by``, the action
    is recorded in ``batch_actions`` in the same transaction (so for resume, cancel and
    set_weight).
    """
    with session_scope(settings.database_url) as session:
        _set_state(session, batch_id, BatchState.PAUSED)
        parked = schedule.park_batch(session, batch_id)
        _record(session, by, batch_id, "pause", f"{parked} waiting jobs parked")
    publish_state(_redis(settings), settings.database_url, batch_id)
    return parked


def resume(settings: Settings, batch_id: int, by: Actor | None = None) -> int:
    """Resume a batch: every parked job of it is due again; return how many.

    No park can come after it: a worker parks a job only while the database says the batch
    is paused (schedule.park), so one that read "paused" late leaves the job to run.
    """
    with session_scope(settings.database_url) as session:
        _set_state(session, batch_id, BatchState.ACTIVE)
        due = schedule.unpark_batch(session, batch_id)
        _record(session, by, batch_id, "resume", f"{due} parked jobs due again")
    publish_state(_redis(settings), settings.database_url, batch_id)
    return due


def cancel(settings: Settings, batch_id: int, by: Actor | None = None) -> int:
    """Cancel a batch: every job not yet called ends failed; return how many were closed.

    Jobs already calling FaceID finish and keep their answer (it is paid for).
    """
    with session_scope(settings.database_url) as session:
        _set_state(session, batch_id, BatchState.CANCELLED)
        closed = schedule.cancel_batch(session, batch_id, CANCELLED_CODE,
                                       _cancelled_why(batch_id))
        _record(session, by, batch_id, "cancel", f"{closed} jobs closed before any call")
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


# -- acting on a filtered subset, dry run first ------------------------------------------
# Codes of a failure before any FaceID call (staging, the egress policy, a hang): such a
# job costs nothing until it reaches its call.
LOCAL_PREFIX = "Local."
NO_CODE = "(no code)"
AUDIT_SURFACES = ("web", "api", "cli")  # admin/audit.py SURFACES (a layer above this one)
BATCH_ACTIONS = ("pause", "resume", "cancel", "weight", "retry", "resend-callbacks")


@dataclass(frozen=True)
class Actor:
    """Who acts on a batch, for its ``batch_actions`` row: a token's name (or the CLI's
    ``cli:user@host``), the surface, and where from."""

    name: str
    surface: str = "cli"
    token_id: int | None = None
    remote: str | None = None


def _code_key(code: str | None) -> str:
    return code or NO_CODE


@dataclass(frozen=True)
class RetryPlan:
    """What ``retry`` would do now: which failed jobs run again and what that may cost.

    Only ``failed`` jobs are retried: a verdict (a completed job, passed or not) is final
    and was paid for, and a refusal is checked again only by submitting the job again.
    """

    batch_id: int
    code: str | None  # the filter; None: every failed job (but those closed by a cancel)
    jobs: int
    by_code: dict[str, int]
    # Of ``jobs``, those that failed before any call (Local.* codes).
    not_called: int
    # Billable calls per job that had a call, as observed in the batch (at least 1); 1 when
    # no job of the batch has had a call yet.
    calls_per_job: float
    observed: bool
    calls: int  # estimated billable calls: jobs × calls_per_job, rounded up
    price_per_call: Decimal
    currency: str
    paused: bool  # the batch is paused: the jobs wait parked until it resumes

    @property
    def amount(self) -> Decimal | None:
        """Estimated spend, or None when FACEID_PRICE_PER_CALL is not set (0)."""
        return self.price_per_call * self.calls if self.price_per_call > 0 else None

    @property
    def upper_bound(self) -> bool:
        """Whether the estimate counts a call for jobs that may never reach one (those that
        failed before their call: their source may fail again)."""
        return self.not_called > 0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types; amounts as strings so no float rounds them."""
        amount = self.amount
        return {"batch_id": self.batch_id, "code": self.code, "jobs": self.jobs,
                "by_code": dict(self.by_code), "not_called": self.not_called,
                "calls_per_job": self.calls_per_job, "observed": self.observed,
                "estimated_calls": self.calls, "upper_bound": self.upper_bound,
                "price_per_call": str(self.price_per_call), "currency": self.currency,
                "estimated_amount": None if amount is None else str(amount),
                "paused": self.paused}

    def describe(self) -> str:
        """Plain text for ``faceid-batch batch retry``."""
        lines = [f"batch {self.batch_id}: {self.jobs:,} failed jobs"
                 + (f" (code {self.code})" if self.code else "")
                 + " to run again from their first attempt"]
        lines += [f"    {c}: {n:,}" for c, n in _by_count(self.by_code)]
        if not self.jobs:
            return "\n".join(lines)
        ratio = (f"{self.calls_per_job:.2f} billable calls per called job, as observed in "
                 "this batch" if self.observed else "1 call per job (no call observed in "
                 "this batch yet)")
        lines.append(f"  estimated billable calls: {self.calls:,} ({ratio})")
        amount = self.amount
        lines.append("  estimated amount: " + (
            f"{amount:,} {self.currency} ({self.calls:,} x {self.price_per_call} "
            f"{self.currency})" if amount is not None
            else "not estimated (set FACEID_PRICE_PER_CALL)"))
        if self.upper_bound:
            lines.append(f"  an upper bound: {self.not_called:,} of these jobs failed before "
                         "any call (Local.*) and cost nothing until they reach it")
        if self.paused:
            lines.append("  the batch is paused: the jobs stay parked until it resumes")
        return "\n".join(lines)


@dataclass(frozen=True)
class ResendPlan:
    """What ``resend_callbacks`` would do now: which finished jobs get their completion
    callback queued again. No FaceID call, no cost."""

    batch_id: int
    code: str | None
    verdict: bool | None  # True: passed; False: a fail verdict; None: any outcome
    jobs: int  # callbacks to queue: one per job
    by_code: dict[str, int]
    # Jobs the filter selects that get nothing: no callback URL, or a callback of theirs
    # still pending (it is delivered on its own schedule).
    without_url: int
    pending: int

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "code": self.code, "verdict": self.verdict,
                "jobs": self.jobs, "by_code": dict(self.by_code),
                "without_url": self.without_url, "pending": self.pending}

    def describe(self) -> str:
        """Plain text for ``faceid-batch batch resend-callbacks``."""
        which = [] if self.verdict is None else ["passed" if self.verdict else "fail-verdict"]
        which += [f"code {self.code}"] if self.code else []
        lines = [f"batch {self.batch_id}: {self.jobs:,} finished jobs"
                 + (f" ({', '.join(which)})" if which else "")
                 + " to get their completion callback again (no FaceID call, no cost)"]
        lines += [f"    {c}: {n:,}" for c, n in _by_count(self.by_code)]
        if self.without_url:
            lines.append(f"  {self.without_url:,} more have no callback URL: nothing is sent")
        if self.pending:
            lines.append(f"  {self.pending:,} more have a callback still pending: "
                         "left to its schedule")
        return "\n".join(lines)


def _by_count(by_code: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(by_code.items(), key=lambda kv: (-kv[1], kv[0]))


def _batch_for_action(session: Session, batch_id: int) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise BatchError(f"batch {batch_id}: no such batch")
    return batch


def _retried(batch_id: int, code: str | None) -> ColumnElement[bool]:
    return schedule.failed_of_batch(batch_id, except_code=CANCELLED_CODE, code=code)


def retry_plan(settings: Settings, batch_id: int, code: str | None = None) -> RetryPlan:
    """The dry run of ``retry``: the batch's ``failed`` jobs (only those that failed with
    ``code`` when it is given; never those closed by a cancel), by code, with an estimate of
    the calls and the cost of running them again.

    The estimate is jobs × the batch's observed billable calls per job that had a call
    (``batch_calls``, the batch's tally of its attempts, over its jobs with an attempt
    counted), at least 1, priced at FACEID_PRICE_PER_CALL. Two aggregate queries over the
    batch's range of ``ix_jobs_batch_tally`` and ``batch_calls``; no job row is loaded.
    """
    with session_scope(settings.database_url) as session:
        batch = _batch_for_action(session, batch_id)
        rows = session.execute(
            select(Job.result_code, func.count()).where(_retried(batch_id, code))
            .group_by(Job.result_code)).all()
        billable, called = session.execute(select(
            select(func.coalesce(func.sum(BatchCalls.calls), 0))
            .where(BatchCalls.batch_id == batch_id, BatchCalls.billable.is_(True))
            .scalar_subquery(),
            select(func.count()).select_from(Job)
            .where(Job.batch_id == batch_id, Job.attempts > 0).scalar_subquery(),
        )).one()
        paused = batch.state == BatchState.PAUSED.value
    by_code = {_code_key(c): int(n) for c, n in rows}
    jobs = sum(by_code.values())
    not_called = sum(n for c, n in rows if c is not None and c.startswith(LOCAL_PREFIX))
    billable, called = int(billable), int(called)
    observed = called > 0 and billable > 0
    # At least one call per job; more when the batch's jobs have needed more (exact, then
    # rounded up).
    calls = max(jobs, -(-jobs * billable // called)) if observed else jobs
    ratio = max(1.0, billable / called) if observed else 1.0
    return RetryPlan(batch_id=batch_id, code=code, jobs=jobs, by_code=by_code,
                     not_called=int(not_called), calls_per_job=ratio, observed=observed,
                     calls=calls,
                     price_per_call=settings.faceid_price_per_call,
                     currency=settings.faceid_price_currency, paused=paused)


def add_action(session: Session, *, batch_id: int, action: str, actor: str, surface: str,
               token_id: int | None = None, remote: str | None = None,
               detail: str | None = None) -> None:
    """The ``batch_actions`` row of an action on a batch, in the action's own transaction:
    written if and only if the action is."""
    _check_surface(surface)
    if action not in BATCH_ACTIONS:
        raise ValueError(f"action {action!r}: one of {', '.join(BATCH_ACTIONS)}")
    session.add(BatchAction(actor=actor[:200], token_id=token_id, surface=surface,
                            action=action, batch_id=batch_id,
                            remote=(remote or "")[:200] or None, detail=detail))


def _check_surface(surface: str) -> None:
    if surface not in AUDIT_SURFACES:
        raise ValueError(f"surface {surface!r}: one of {', '.join(AUDIT_SURFACES)}")


def _record(session: Session, by: Actor | None, batch_id: int, action: str,
            detail: str) -> None:
    if by is not None:
        add_action(session, batch_id=batch_id, action=action, actor=by.name,
                   surface=by.surface, token_id=by.token_id, remote=by.remote, detail=detail)


def _changed(batch_id: int, expect: int, found: int, what: str) -> BatchError:
    return BatchError(f"batch {batch_id}: the dry run counted {expect:,} {what}, there are "
                      f"{found:,} now; nothing was done (look at the plan again)")


def retry(settings: Settings, batch_id: int, code: str | None = None, *, actor: str,
          expect: int | None = None, surface: str = "cli", token_id: int | None = None,
          remote: str | None = None) -> int:
    """Run the batch's failed jobs again from their first attempt (only those that failed
    with ``code`` when it is given): exactly the jobs ``retry_plan`` counts. Return how
    many.

    Only ``failed`` jobs: a verdict is final and paid for. Jobs closed by a cancel are not
    retried, and nothing is in a cancelled batch; in a paused batch the jobs are parked until
    it resumes. With ``expect`` (the plan's ``jobs``), a different number of matching jobs
    refuses with BatchError and changes nothing. One ``batch_actions`` row (action
    "retry", by ``actor`` on ``surface``) is written with the change.
    """
    _check_surface(surface)
    with session_scope(settings.database_url) as session:
        batch = _batch_for_action(session, batch_id)
        if batch.state == BatchState.CANCELLED.value:
            raise BatchError(f"batch {batch_id} is cancelled; nothing is retried in it")
        restarted = schedule.restart_failed(
            session, batch_id, paused=batch.state == BatchState.PAUSED.value,
            except_code=CANCELLED_CODE, code=code)
        if expect is not None and restarted != expect:
            raise _changed(batch_id, expect, restarted, "failed jobs")  # rolled back
        add_action(session, batch_id=batch_id, action="retry", actor=actor, surface=surface,
               token_id=token_id, remote=remote,
               detail=f"code {code or '(any)'}: {restarted} failed jobs run again")
    return restarted


def _resent(batch_id: int, code: str | None, verdict: bool | None) -> ColumnElement[bool]:
    """The batch's finished jobs the filter selects (with or without a callback URL)."""
    chosen = [Job.batch_id == batch_id, Job.state.in_(JobState.final())]
    if code is not None:
        chosen.append(Job.result_code == code)
    if verdict is not None:
        chosen += [Job.state == JobState.COMPLETED.value, Job.passed == verdict]
    return and_(*chosen)


def _callback_pending() -> ColumnElement[bool]:
    return exists().where(WebhookMessage.job_id == Job.id,
                          WebhookMessage.state == callbacks.PENDING).correlate(Job)


def _to_send() -> ColumnElement[bool]:
    """Of the jobs selected: those whose callback is queued again."""
    return and_(Job.callback_url.is_not(None), ~_callback_pending())


def resend_plan(settings: Settings, batch_id: int, code: str | None = None,
                verdict: bool | None = None) -> ResendPlan:
    """The dry run of ``resend_callbacks``: the batch's finished jobs (completed, failed or
    refused; only a passed / fail-verdict completed job when ``verdict`` is True / False;
    only those ended with ``code`` when it is given) that have a callback URL and no
    callback of theirs still pending, by code. One aggregate query."""
    with session_scope(settings.database_url) as session:
        _batch_for_action(session, batch_id)
        rows = session.execute(
            select(Job.result_code, func.count().filter(_to_send()),
                   func.count().filter(Job.callback_url.is_(None)), func.count())
            .where(_resent(batch_id, code, verdict))
            .group_by(Job.result_code)).all()
    by_code = {_code_key(c): int(n) for c, n, _, _ in rows if n}
    jobs = sum(by_code.values())
    without_url = sum(int(none) for _, _, none, _ in rows)
    matched = sum(int(n) for _, _, _, n in rows)
    return ResendPlan(batch_id=batch_id, code=code, verdict=verdict, jobs=jobs,
                      by_code=by_code, without_url=without_url,
                      pending=matched - jobs - without_url)


def resend_callbacks(settings: Settings, batch_id: int, code: str | None = None,
                     verdict: bool | None = None, *, actor: str, expect: int | None = None,
                     surface: str = "cli", token_id: int | None = None,
                     remote: str | None = None) -> int:
    """Queue the completion callback again (a new ``webhook_messages`` row, so a new
    ``webhook-id``) for exactly the jobs ``resend_plan`` counts; return how many. No FaceID
    call. With ``expect``, a different number refuses with BatchError and queues nothing.
    One ``batch_actions`` row (action "resend-callbacks") is written with them.
    """
    _check_surface(surface)
    with session_scope(settings.database_url) as session:
        _batch_for_action(session, batch_id)
        queued = callbacks.enqueue_again(
            session, and_(_resent(batch_id, code, verdict), _to_send()))
        if expect is not None and queued != expect:
            raise _changed(batch_id, expect, queued, "callbacks")  # rolled back
        chosen = [f"code {code}"] if code else []
        chosen += [] if verdict is None else ["passed" if verdict else "fail verdict"]
        add_action(session, batch_id=batch_id, action="resend-callbacks", actor=actor,
               surface=surface, token_id=token_id, remote=remote,
               detail=f"{', '.join(chosen) or 'every finished job'}: "
                      f"{queued} callbacks queued again")
    return queued


def check_weight(weight: float) -> float:
    """A batch's weight: above 0, at most a million."""
    if not 0 < weight <= 1_000_000:
        raise BatchError(f"weight {weight!r}: must be a number above 0 (at most 1000000)")
    return weight


def set_weight(settings: Settings, batch_id: int, weight: float,
               by: Actor | None = None) -> Batch:
    """Set the batch's share of the feed (takes effect within a second)."""
    check_weight(weight)
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise BatchError(f"batch {batch_id}: no such batch")
        _record(session, by, batch_id, "weight", f"weight {batch.weight:g} -> {weight:g}")
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
