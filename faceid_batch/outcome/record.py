"""What an answer does to its job, written in one transaction: its attempt row, and the
job's next state as the code table says (errors.Rule): a verdict completes it with its
result and best frame, a final refusal fails it, anything else is a due time (a retry
after its backoff, a wait for the budget or the account breaker) or, once the attempts
are used up, a failure.

A paid answer the database could not take is parked in Redis (answers.park) and written
by the job's next run, which never calls again.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError

from faceid_batch import tenants
from faceid_batch.call.errors import backoff
from faceid_batch.call.faceid_client import Answer
from faceid_batch.db import write_scope
from faceid_batch.models import Job, JobState, table
from faceid_batch.ops import metrics
from faceid_batch.outcome.persist import (
    BestFrameError,
    attempt_number,
    fetch_best_frame,
    record_lost_attempt,
    store_best_frame,
    write_answer,
)
from faceid_batch.resources import Resources
from faceid_batch.scheduling import answers, callbacks, schedule
from faceid_batch.scheduling.schedule import failed_columns
from faceid_batch.stage.storage import StagedMedia
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)

# Built once: this runs once per call (see persist on the cost of rebuilding statements).
_J = table(Job).c
_JOB_TO_ANSWER = select(_J.state, _J.attempts, _J.lease_id, _J.tenant_id).where(
    _J.id == bindparam("of_job"))


def record_paid(res: Resources, job_id: int, answer: Answer,
                staged: tuple[StagedMedia, StagedMedia] | None = None) -> str:
    """Write an answer the API gave (fresh, or parked earlier); if the database fails, park
    it in Redis first, so that no run of this job pays for it again."""
    try:
        return record_answer(res, job_id, answer, staged)
    except DBAPIError:
        answers.park(res.redis, job_id, answer)
        raise


def record_answer(res: Resources, job_id: int, answer: Answer,
                  staged: tuple[StagedMedia, StagedMedia] | None = None) -> str:
    """Write one answer and the job's next state (see the module docstring); return that
    state. ``staged``: the media this call used, kept on the job for its retries."""
    s = res.settings
    rule = answer.rule
    # Statements, not loaded objects: this runs once per call (at 20/s per account), and
    # the ORM's unit of work cost as much CPU as the rest of the job's database work.
    columns: dict[str, Any] = {}
    # The best frame is read before the write, outside the database's write turn, and
    # stored in the answer's transaction: one write per answer, not two.
    frame = _best_frame(res, job_id, answer) if rule.verdict else None
    with write_scope(s.database_url) as session:
        row = session.execute(_JOB_TO_ANSWER, {"of_job": job_id}).one()
        state: str = schedule.LOST
        # Still ours: no other worker has claimed it since (see schedule._OURS).
        if row.lease_id == res.lease.id and row.state not in JobState.final():
            if staged is not None:
                photo, video = staged
                columns.update(photo_md5=photo.info.md5, photo_key=photo.key,
                               video_md5=video.info.md5, video_key=video.key)
            state = _next_state(res, answer, attempt_number(row.attempts, answer), columns,
                                tenants.allowed_cached(s.database_url, row.tenant_id).accounts)
            threshold = s.pass_threshold if rule.verdict else None
            if not write_answer(session, job_id, res.lease.id, row.attempts, answer, columns,
                                threshold, res.billing):
                state = schedule.LOST
            else:
                if state == JobState.COMPLETED.value and frame is not None:
                    store_best_frame(session, job_id, *frame)
                if state in (JobState.COMPLETED.value, JobState.FAILED.value):
                    callbacks.enqueue(session, job_id)
        if state == schedule.LOST:
            # Another worker claimed the job after this one's lease was judged gone, or it
            # ended: the job is left to its holder, and the paid call is recorded all the
            # same, outside the job's count of attempts.
            record_lost_attempt(session, job_id, row.attempts, answer, res.billing)
            log.warning("job %s: answer %s (RequestId %s) came after this worker lost the "
                        "job; recorded as an attempt, the job left to its holder", job_id,
                        answer.code, answer.request_id)

    if state in (JobState.COMPLETED.value, JobState.FAILED.value):
        metrics.JOBS_FINISHED.labels(state=state).inc()
    return state


def _next_state(res: Resources, answer: Answer, attempts: int, columns: dict[str, Any],
                allowed: tuple[str, ...] | None = None) -> JobState:
    """The job's state after ``answer`` (its ``attempts``-th counted try), its columns
    added to ``columns``. ``allowed``: the accounts its tenant may be called by (None:
    any)."""
    s = res.settings
    rule = answer.rule
    if rule.verdict:
        return JobState.COMPLETED  # write_answer adds the result's columns
    if rule.final:
        # The same request would be refused again: final, not retried.
        columns.update(failed_columns(answer.code, answer.message or answer.rule.why))
        return JobState.FAILED
    if rule.counts_attempt and attempts >= s.max_attempts:
        columns.update(failed_columns(
            answer.code, f"gave up after {attempts} attempts: {answer.message or rule.why}"))
        return JobState.FAILED
    if not rule.retry:
        # The account cannot call (rule.trips_breaker): the job waits for the breaker, or
        # only a moment when another account of its region that its tenant allows may call
        # for it (routing.py).
        delay = s.breaker_probe_after
        if answer.account and answer.region \
                and res.router.others_may_call(answer.region, answer.account, allowed):
            delay = random.uniform(0.5, 2.0)
    elif rule.counts_attempt:
        delay = backoff(attempts, s.retry_base_delay, s.retry_max_delay)
    else:
        delay = random.uniform(0.5, 2.0)  # someone else used the budget: not a failure
    # An attempt that counts is a retry; a wait for the budget or the breaker is not. The
    # retry is a due time in the row, not a message waiting in a worker.
    state = JobState.RETRYING if rule.counts_attempt else JobState.QUEUED
    columns.update(schedule.reschedule_columns(utcnow() + timedelta(seconds=delay), state))
    return state


def _best_frame(res: Resources, job_id: int, answer: Answer) -> tuple[bytes, str] | None:
    """The answer's best frame and its MD5, or None (none given, or it could not be read)."""
    if answer.best_frame is None:
        return None
    try:
        return fetch_best_frame(
            res.stager.egress, answer.best_frame, res.settings.bestframe_max_bytes
        )
    except BestFrameError as exc:
        # The verdict is stored all the same; a missing frame does not undo a paid answer.
        log.warning("job %s: best frame not kept: %s", job_id, exc)
        return None


def record_resigned(res: Resources, job_id: int, answer: Answer) -> bool:
    """The attempt row of a call refused for its timestamp and signed again at once
    (errors.Rule.resign): recorded as every call is, never counted against the job's
    attempts, its code not billed, the job's state untouched. False, with nothing written,
    if this worker no longer holds the job."""
    with write_scope(res.settings.database_url) as session:
        row = session.execute(_JOB_TO_ANSWER, {"of_job": job_id}).one()
        if row.lease_id != res.lease.id or row.state in JobState.final():
            return False
        # The row of a call that does not count (``counted`` false), as for a lost one.
        record_lost_attempt(session, job_id, row.attempts, answer, res.billing)
    return True
