"""Celery tasks. ``verify`` runs one job: stage media, take a token, call, classify, persist.

Tasks get job ids, never rows, and re-load the row; the row was committed before the task
was sent. Every task is declared through ``faceid_task`` so the defaults hold everywhere.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
import requests
from celery import Task
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import DBAPIError

from faceid_batch import answers, logs, metrics, preflight
from faceid_batch.batches import batch_gate
from faceid_batch.db import session_scope, write_scope
from faceid_batch.errors import Kind
from faceid_batch.faceid_client import Answer, CompareRequest, SendTooLate
from faceid_batch.media import MediaError
from faceid_batch.models import Job, JobState, utcnow
from faceid_batch.persist import (
    UPDATE_JOB,
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
    """A countdown retry is an ETA message held unacked by a worker; the Redis transport
    redelivers it after the visibility timeout. Staying well under that timeout means a
    waiting retry is never delivered twice."""
    return min(res.settings.retry_max_delay, res.settings.broker_visibility_timeout / 3)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    return random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))


class _Leases:
    """Keeps this process's job locks alive: one thread renews them all every ttl/3.

    The lease is short, so the lock of a task whose worker died is gone before its message
    comes back; renewing it means a task that runs long (a slow database) keeps its lock.
    """

    _RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
              "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0")

    def __init__(self, client: redis.Redis, ttl_ms: int) -> None:
        self.redis = client
        self.ttl_ms = ttl_ms
        self._held: dict[str, str] = {}
        self._guard = threading.Lock()
        threading.Thread(target=self._run, name="job-leases", daemon=True).start()

    def hold(self, key: str, token: str) -> None:
        with self._guard:
            self._held[key] = token

    def drop(self, key: str) -> None:
        with self._guard:
            self._held.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.ttl_ms / 3000)
            with self._guard:
                held = list(self._held.items())
            if not held:
                continue
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key, token in held:
                    pipe.eval(self._RENEW, 1, key, token, self.ttl_ms)
                pipe.execute()
            except redis.RedisError:
                pass  # Redis is away; a lease runs out by itself if it stays away


_leases: dict[tuple[int, int], _Leases] = {}
_leases_guard = threading.Lock()


def _job_leases(res: Resources, ttl: float) -> _Leases:
    key = (os.getpid(), int(ttl * 1000))
    with _leases_guard:
        if key not in _leases:
            _leases[key] = _Leases(res.redis, key[1])
        return _leases[key]


class _JobLock:
    """A per-job Redis lock so a redelivered message never runs beside the first one."""

    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"

    def __init__(self, res: Resources, job_id: int, ttl: float) -> None:
        self.redis = res.redis
        self.key = f"faceid:job:{job_id}:lock"
        self.token = uuid.uuid4().hex
        self.ttl_ms = int(ttl * 1000)
        self.leases = _job_leases(res, ttl)

    def __enter__(self) -> bool:
        if not self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self.leases.hold(self.key, self.token)
        return True

    def __exit__(self, *exc: object) -> None:
        self.leases.drop(self.key)
        try:
            self.redis.eval(self._RELEASE, 1, self.key, self.token)
        except redis.RedisError:
            pass  # the lease expires by itself


# A job's statements, built once (see persist: rebuilding them per job cost more CPU than
# running them).
_J = Job.__table__.c
_JOB_TO_RUN = select(
    _J.state, _J.batch_id, _J.lane, _J.photo_source, _J.video_source, _J.photo_md5,
    _J.video_md5, _J.liveness_type, _J.validate_data, _J.video_key,
).where(_J.id == bindparam("of_job"))
_START_JOB = UPDATE_JOB.values(
    state=JobState.RUNNING.value,
    started_at=func.coalesce(_J.started_at, bindparam("now")),
    enqueued_at=func.coalesce(_J.enqueued_at, bindparam("now")),
)
_JOB_TO_ANSWER = select(_J.state, _J.attempts, _J.callback_url, _J.lane).where(
    _J.id == bindparam("of_job"))


@faceid_task(name="faceid_batch.verify")
def verify(self: Task, job_id: int) -> str:
    """Run one verification job to its next state."""
    res = resources()
    s = res.settings
    # Short and renewed (see _Leases): well under the visibility timeout, after which the
    # message of a dead worker comes back and must find the lock gone.
    lock_ttl = min(30.0, s.broker_visibility_timeout / 2)
    with _JobLock(res, job_id, lock_ttl) as locked:
        if not locked:
            # Another delivery of this job is running; look again later rather than call twice.
            raise self.retry(countdown=min(30.0, max_countdown(res)))
        try:
            return _verify_locked(self, res, job_id)
        except DBAPIError as exc:
            # The database is unreachable. Any paid answer is already parked in Redis
            # (answers.park) and is written first on the next run, without a new call.
            log.warning("job %s: database error (%s: %s); retrying", job_id,
                        type(exc.orig).__name__, str(exc.orig).splitlines()[0][:200])
            raise self.retry(countdown=backoff(3, 2.0, max_countdown(res))) from None


def _verify_locked(task: Task, res: Resources, job_id: int) -> str:
    s = res.settings
    parked = answers.take(res.redis, job_id)
    if parked is not None:
        logs.bind(request_id=parked.request_id)
        # A paid answer that could not be written earlier: store it, never call again.
        return _apply_parked(task, res, job_id, parked)

    with write_scope(s.database_url) as session:
        job = session.execute(_JOB_TO_RUN, {"of_job": job_id}).first()
        if job is None:
            log.error("job %s: no such job row; dropping the message", job_id)
            return "missing"
        if job.state in JobState.final():
            # Already answered: a redelivery must never pay for a second call.
            return str(job.state)
        # A paused or cancelled batch: park or close the job without a call.
        if job.batch_id is not None and (
                gated := batch_gate(res, session.get_one(Job, job_id))) is not None:
            return gated
        session.execute(_START_JOB, {"of_job": job_id, "now": utcnow()})
        lane, photo_src, video_src = job.lane, job.photo_source, job.video_source
        photo_md5, video_md5 = job.photo_md5, job.video_md5
        liveness, validate = job.liveness_type, job.validate_data
        # An earlier attempt recorded the key: the video is likely in the bucket already.
        staged_before = job.video_key is not None

    # This check only saves staging a job the breaker would stop: a closed state read in
    # the last second will do. The one before the call (below) reads it afresh.
    may_call, wait = res.breaker.before_call(max_age=1.0)
    if not may_call:
        return _requeue(task, res, job_id, wait + random.uniform(0, 2))

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
        log.warning("job %s: staging failed (%s); retrying", job_id, type(exc).__name__)
        raise task.retry(countdown=backoff(2, s.retry_base_delay, max_countdown(res))) from None
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
        return _requeue(task, res, job_id, wait + random.uniform(0, 2))
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
    return _apply_parked(task, res, job_id, answer, (photo, video))


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


def _apply_parked(task: Task, res: Resources, job_id: int, answer: Answer,
                  staged: tuple[StagedMedia, StagedMedia] | None = None) -> str:
    """Write a paid answer; if the database fails, park it in Redis before giving up."""
    try:
        return _apply_answer(task, res, job_id, answer, staged)
    except DBAPIError:
        answers.park(res.redis, job_id, answer)
        raise


def _requeue(task: Task, res: Resources, job_id: int, delay: float) -> str:
    """Put the job back to wait (account breaker open): not an attempt, not a failure."""
    delay = min(delay, max_countdown(res))
    with session_scope(res.settings.database_url) as session:
        job = session.get(Job, job_id)
        job.state = JobState.QUEUED.value
        job.next_attempt_at = utcnow() + timedelta(seconds=delay)
        job.enqueued_at = utcnow()  # the retry is a new message (see recovery)
    raise task.retry(countdown=delay)


def _apply_answer(task: Task, res: Resources, job_id: int, answer: Answer,
                  staged: tuple[StagedMedia, StagedMedia] | None = None) -> str:
    s = res.settings
    kind = answer.rule.kind
    # Statements, not loaded objects: this runs once per call (at 20/s per account), and
    # the ORM's unit of work cost as much CPU as the rest of the job's database work.
    columns: dict[str, Any] = {}
    threshold = None
    delay = 0.0
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
                delay = backoff(attempts, s.retry_base_delay, max_countdown(res))
            state = (JobState.RETRYING.value if kind == Kind.TRANSIENT
                     else JobState.QUEUED.value)
            columns.update(state=state, next_attempt_at=utcnow() + timedelta(seconds=delay),
                           enqueued_at=utcnow())  # the retry is a new message (see recovery)
        write_answer(session, job_id, row.attempts, answer, columns, threshold)
        if state == JobState.COMPLETED.value and frame is not None:
            store_best_frame(session, job_id, *frame)

    if state in (JobState.COMPLETED.value, JobState.FAILED.value):
        metrics.JOBS_FINISHED.labels(state=state).inc()
        notify.job_finished(res, job_id, (row.callback_url, row.lane))
        return state
    raise task.retry(countdown=delay)


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
