"""Celery tasks. ``verify`` runs one job: stage media, take a token, call, classify, persist.

Tasks get job ids, never rows, and re-load the row. A message only says "this job may be
due": the job runs if this worker *claims* it (schedule.claim: waiting and due, taken for
this process's lease in one guarded UPDATE), so a message delivered twice, late or for a job
another worker holds is dropped. Whatever the job needs next (a retry after its backoff,
waiting out the account breaker, Redis or the database coming back) is written to its row
as a due time; no task waits inside a worker on a countdown message.

Every task is declared through ``faceid_task`` so the defaults hold everywhere.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
import requests
from celery import Task
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError

from faceid_batch import answers, logs, metrics, preflight, schedule
from faceid_batch.batches import batch_gate
from faceid_batch.db import session_scope, write_scope
from faceid_batch.errors import Kind
from faceid_batch.faceid_client import Answer, CompareRequest, SendTooLate
from faceid_batch.media import MediaError
from faceid_batch.models import Job, JobState, utcnow
from faceid_batch.persist import (
    BestFrameError,
    attempt_number,
    fail_job,
    failed_columns,
    fetch_best_frame,
    refuse_job,
    store_best_frame,
    write_answer,
)
from faceid_batch.ratelimit import STALE_AFTER
from faceid_batch.storage import StagedMedia, display_source
from faceid_batch.submit import is_remote
from faceid_batch.worker import Resources, celery_app, resources

log = logging.getLogger(__name__)

_ALLOWED_OPTIONS = {"name", "queue", "soft_time_limit", "time_limit"}
PREPARE_AHEAD = 0.05  # seconds before the reserved start to check the breaker and sign
# Redis was unreachable before the call: the job is due again after this long (plus jitter).
REDIS_AWAY_DELAY = 2.0
# The database was unreachable: the heartbeat gives the job back once it is there again.
DATABASE_AWAY_DELAY = 2.0


def faceid_task(**options: Any):  # type: ignore[no-untyped-def]
    """Declare a task with the project defaults; refuse options we have not vetted."""
    unknown = set(options) - _ALLOWED_OPTIONS
    if unknown:
        raise TypeError(f"faceid_task does not take {sorted(unknown)}")
    if "name" not in options:
        raise TypeError("faceid_task needs an explicit name")
    return celery_app.task(
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        # Attempts are counted in the database (MAX_ATTEMPTS), not by Celery.
        max_retries=None,
        **options,
    )


def max_countdown(res: Resources) -> float:
    """A countdown retry (webhook deliveries) is an ETA message held unacked by a worker;
    the Redis transport redelivers it after the visibility timeout. Staying well under that
    timeout means a waiting retry is never delivered twice."""
    return min(res.settings.retry_max_delay, res.settings.broker_visibility_timeout / 3)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    return random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))


# A job's statements, built once (see persist: rebuilding them per job cost more CPU than
# running them).
_J = Job.__table__.c
_JOB_TO_RUN = select(
    _J.state, _J.batch_id, _J.lane, _J.photo_source, _J.video_source, _J.photo_md5,
    _J.video_md5, _J.liveness_type, _J.validate_data, _J.video_key,
).where(_J.id == bindparam("of_job"))
_JOB_TO_ANSWER = select(_J.state, _J.attempts, _J.callback_url, _J.lane, _J.lease_id).where(
    _J.id == bindparam("of_job"))


@faceid_task(name="faceid_batch.verify")
def verify(self: Task, job_id: int) -> str:
    """Run one verification job to its next state."""
    return run_job(resources(), job_id)


def run_job(res: Resources, job_id: int) -> str:
    """Claim the job for this process's lease and run it; return what it became (or why
    the message was dropped). Never leaves a claimed job without a way back: a failure of
    Redis or the database before the call gives it back to the schedule."""
    lease = res.lease
    try:
        job = _claim(res, job_id, lease.id)
    except DBAPIError as exc:
        # The claim may or may not have been written: a give-back only moves it if it was.
        _database_away(res, job_id, exc)
        return "database-unavailable"
    if isinstance(job, str):
        return job
    try:
        return _run_claimed(res, job_id, job)
    except redis.RedisError as exc:
        # Raised only before the call (the breaker, the limiter, the park): nothing was paid.
        log.warning("job %s: Redis unavailable (%s); due again in a few seconds", job_id,
                    type(exc).__name__)
        try:
            return _give_back(res, job_id, REDIS_AWAY_DELAY + random.uniform(0, 2))
        except DBAPIError as db_exc:
            _database_away(res, job_id, db_exc)
            return "database-unavailable"
    except DBAPIError as exc:
        # Any paid answer is already parked in Redis (answers.park) and is written first on
        # the next run, without a new call.
        _database_away(res, job_id, exc)
        return "database-unavailable"


def _database_away(res: Resources, job_id: int, exc: DBAPIError) -> None:
    log.warning("job %s: database error (%s: %s); it goes back to the schedule when the "
                "database is back", job_id, type(exc.orig).__name__,
                str(exc.orig).splitlines()[0][:200] if str(exc.orig) else "")
    res.lease.release_later(job_id, DATABASE_AWAY_DELAY)


def _claim(res: Resources, job_id: int, lease_id: str) -> Any:
    """The job's row once claimed for ``lease_id``, or why it is not run (a string)."""
    with write_scope(res.settings.database_url) as session:
        job = session.execute(_JOB_TO_RUN, {"of_job": job_id}).first()
        if job is None:
            log.error("job %s: no such job row; dropping the message", job_id)
            return "missing"
        if job.state in JobState.final():
            # Already answered: a redelivery must never pay for a second call.
            return str(job.state)
        # A paused or cancelled batch: park or close the job without a call.
        if job.batch_id is not None and (
                gated := batch_gate(res, session, job_id, job.batch_id)) is not None:
            return gated
        if not schedule.claim(session, job_id, lease_id):
            # Held by another worker, parked, or a retry whose time has not come: its row
            # says when it runs, and the feeder sends it then.
            return "not-claimed"
    return job


def _give_back(res: Resources, job_id: int, delay: float,
               state: str = JobState.QUEUED.value) -> str:
    """Put a job this worker holds back in the schedule, due after ``delay``; not an attempt."""
    with write_scope(res.settings.database_url) as session:
        schedule.reschedule(session, job_id, res.lease.id,
                            utcnow() + timedelta(seconds=delay), state)
    return state


def _run_claimed(res: Resources, job_id: int, job: Any) -> str:
    s = res.settings
    parked = answers.take(res.redis, job_id, res.lease.id)
    if parked is not None:
        logs.bind(request_id=parked.request_id)
        # A paid answer that could not be written earlier: store it, never call again.
        return _store_paid(res, job_id, parked)
    lane, photo_src, video_src = job.lane, job.photo_source, job.video_source
    photo_md5, video_md5 = job.photo_md5, job.video_md5
    liveness, validate = job.liveness_type, job.validate_data
    # An earlier attempt recorded the key: the video is likely in the bucket already.
    staged_before = job.video_key is not None

    # This check only saves staging a job the breaker would stop: a closed state read in
    # the last second will do. The one before the call (below) reads it afresh.
    may_call, wait = res.breaker.before_call(max_age=1.0)
    if not may_call:
        return _give_back(res, job_id, wait + random.uniform(0, 2))

    # Local files were preflighted at submit; remote ones are read here, on the copy staging
    # makes anyway, before anything is uploaded or called.
    findings: list[dict[str, Any]] = []

    def remote_check(kind: str, source: str) -> Callable[[str], None] | None:
        if not is_remote(source):
            return None

        def inspect(path: str) -> None:
            pair = (path, None) if kind == "photo" else (None, path)
            findings.extend(preflight.check(s, liveness, *pair,
                                            names={kind: display_source(source)}).items)
        return inspect

    try:
        photo = res.stager.stage("photo", photo_src, photo_md5, remote_check("photo", photo_src))
        video = None
        if preflight.Findings(findings).refusal is None:
            video = res.stager.stage("video", video_src, video_md5,
                                     remote_check("video", video_src),
                                     check_existing=staged_before)
    except MediaError as exc:
        # Bad media fails the same way every time: final, and no API call is made.
        with session_scope(s.database_url) as session:
            fail_job(session, session.get(Job, job_id), "Local.MediaInvalid", str(exc))
        log.info("job %s: media refused before any call: %s", job_id, exc)
        notify.job_finished(res, job_id)
        return JobState.FAILED.value
    except (CosClientError, CosServiceError, requests.RequestException, OSError) as exc:
        delay = backoff(2, s.retry_base_delay, s.retry_max_delay)
        log.warning("job %s: staging failed (%s); due again in %.1fs", job_id,
                    type(exc).__name__, delay)
        return _give_back(res, job_id, delay, JobState.RETRYING.value)
    if findings and (refused := _store_preflight(res, job_id, findings)) is not None:
        return refused
    assert video is not None

    slot = res.limiter.reserve_slot(lane)
    metrics.RATE_LIMIT_WAIT.observe(max(0.0, slot.deadline - time.monotonic()))
    # Everything but the send happens before the reserved start, so the call leaves on time
    # (late starts bunch up at the API and can exceed its limit in a sliding second).
    res.limiter.sleep_until(slot.deadline - PREPARE_AHEAD)
    # The breaker may have opened while this job waited for its slot.
    may_call, wait = res.breaker.before_call()
    if not may_call:
        res.limiter.release(slot)
        return _give_back(res, job_id, wait + random.uniform(0, 2))
    prepared = res.faceid.prepare(CompareRequest(
        image_url=res.stager.presign(photo.key),
        image_md5=photo.info.md5,
        video_url=res.stager.presign(video.key),
        video_md5=video.info.md5,
        liveness_type=liveness,
        validate_data=validate,
    ))
    late: list[float] = []
    while True:
        try:
            # The client sleeps until the slot at the first write, the request built and a
            # connection in hand (see faceid_client), so it leaves as close to it as it can.
            answer = res.faceid.send(
                prepared, send_at=slot.deadline, send_by=slot.deadline + STALE_AFTER,
                on_sent=lambda when, s=slot: late.append(res.limiter.started_at(s, when)))
            break
        except SendTooLate:
            # The thread got to the write too long after its slot: the call is not made on
            # it (see faceid_client); the slot goes back and the call waits for a new one.
            res.limiter.release(slot)
            metrics.RATE_LIMIT_TOO_LATE.inc()
            log.info("job %s: not sent on its rate-limit slot (its thread got there too "
                     "late); reserving a new slot", job_id)
            slot = res.limiter.reserve_slot(lane)
            # As for the first slot: not holding a pooled connection longer than this.
            res.limiter.sleep_until(slot.deadline - PREPARE_AHEAD)
    if not late:
        res.limiter.release(slot)  # nothing was sent (no connection): the slot is unused
    late_ms = (late[0] if late else 0.0) * 1000
    logs.bind(request_id=answer.request_id)
    metrics.observe_call(answer.code, answer.rule.kind, answer.latency_ms, late_ms / 1000)
    log.info("job %s: %s (RequestId %s, %d ms, sent %.1f ms after its slot)", job_id,
             answer.code, answer.request_id, answer.latency_ms, late_ms)
    res.breaker.record(answer.code if answer.rule.kind == Kind.ACCOUNT else None)
    return _store_paid(res, job_id, answer, (photo, video))


def _store_preflight(res: Resources, job_id: int,
                     findings: list[dict[str, Any]]) -> str | None:
    """Keep the worker's preflight findings on the job; refuse it if one says so."""
    refusal = preflight.Findings(findings).refusal
    with session_scope(res.settings.database_url) as session:
        job = session.get(Job, job_id)
        stored = list(job.preflight or [])
        stored += [f for f in findings if f not in stored]  # a retry stages (and reads) again
        if refusal is None:
            job.preflight = stored
            return None
        refuse_job(session, job, refusal, stored)
    log.info("job %s: refused by preflight before any call: %s", job_id,
             preflight.describe(refusal))
    notify.job_finished(res, job_id)
    return JobState.REFUSED.value


def _store_paid(res: Resources, job_id: int, answer: Answer,
                staged: tuple[StagedMedia, StagedMedia] | None = None) -> str:
    """Write an answer the API gave (fresh, or parked earlier); if the database fails, park
    it in Redis first, so that no run of this job pays for it again."""
    try:
        return _store_answer(res, job_id, answer, staged)
    except DBAPIError:
        answers.park(res.redis, job_id, answer)
        raise


def _store_answer(res: Resources, job_id: int, answer: Answer,
                  staged: tuple[StagedMedia, StagedMedia] | None = None) -> str:
    s = res.settings
    kind = answer.rule.kind
    # Statements, not loaded objects: this runs once per call (at 20/s per account), and
    # the ORM's unit of work cost as much CPU as the rest of the job's database work.
    columns: dict[str, Any] = {}
    threshold = None
    # The best frame is read before the write, outside the database's write turn, and
    # stored in the answer's transaction: one write per answer, not two.
    final = kind in (Kind.SUCCESS, Kind.VERDICT)
    frame = _fetch_best_frame(res, job_id, answer) if final else None
    with write_scope(s.database_url) as session:
        row = session.execute(_JOB_TO_ANSWER, {"of_job": job_id}).one()
        if row.state in JobState.final():
            return str(row.state)
        if staged is not None:
            photo, video = staged
            columns.update(photo_md5=photo.info.md5, photo_key=photo.key,
                           video_md5=video.info.md5, video_key=video.key)
        attempts = attempt_number(row.attempts, answer)
        if final:
            threshold = s.pass_threshold
            state = JobState.COMPLETED.value
        elif kind == Kind.REQUEST:
            # The same request would be refused again: final, not retried.
            columns.update(failed_columns(answer.code, answer.message or answer.rule.why))
            state = JobState.FAILED.value
        elif kind == Kind.TRANSIENT and attempts >= s.max_attempts:
            columns.update(failed_columns(
                answer.code,
                f"gave up after {attempts} attempts: {answer.message or answer.rule.why}"))
            state = JobState.FAILED.value
        else:
            if kind == Kind.THROTTLED:
                delay = random.uniform(0.5, 2.0)  # someone else used the budget: not a failure
            elif kind == Kind.ACCOUNT:
                delay = s.breaker_probe_after  # the breaker is open: keep the job queued
            else:
                delay = backoff(attempts, s.retry_base_delay, s.retry_max_delay)
            state = (JobState.RETRYING.value if kind == Kind.TRANSIENT
                     else JobState.QUEUED.value)
            if row.state == JobState.RUNNING.value and row.lease_id == res.lease.id:
                # The retry is a due time in the row, not a message waiting in a worker.
                columns.update(schedule.reschedule_columns(
                    utcnow() + timedelta(seconds=delay), state))
            else:
                # Another worker took the job over (this one's lease was judged gone): the
                # call is recorded, the job stays where its holder has it.
                state = str(row.state)
        write_answer(session, job_id, row.attempts, answer, columns, threshold)
        if state == JobState.COMPLETED.value and frame is not None:
            store_best_frame(session, job_id, *frame)

    if state in (JobState.COMPLETED.value, JobState.FAILED.value):
        metrics.JOBS_FINISHED.labels(state=state).inc()
        notify.job_finished(res, job_id, (row.callback_url, row.lane))
    return state


def _fetch_best_frame(res: Resources, job_id: int, answer: Answer) -> tuple[bytes, str] | None:
    """The answer's best frame and its MD5, or None (none given, or it could not be read)."""
    if answer.best_frame is None:
        return None
    try:
        return fetch_best_frame(
            res.stager.http, answer.best_frame, res.settings.bestframe_max_bytes
        )
    except BestFrameError as exc:
        # The verdict is stored all the same; a missing frame does not undo a paid answer.
        log.warning("job %s: best frame not kept: %s", job_id, exc)
        return None


@faceid_task(name="faceid_batch.sweep")
def sweep(self: Task) -> dict[str, int]:
    """Re-send jobs that no message will bring back (see recovery.sweep_stuck_jobs)."""
    from faceid_batch.recovery import sweep_stuck_jobs

    return sweep_stuck_jobs(resources())


# Registers faceid_batch.deliver_webhook in every worker (notify imports faceid_task above).
# Also registers faceid_batch.purge (the scheduled retention purge, purge.py).
from faceid_batch import notify, purge  # noqa: E402, F401
