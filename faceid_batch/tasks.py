"""Celery tasks. The verify task runs one job: stage media, take a token, call, classify, persist.

Tasks get job ids, never rows, and re-load the row; the row was committed before the task
was sent. Every task is declared through ``faceid_task`` so the defaults hold everywhere.
"""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

import requests
from celery import Task
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from sqlalchemy import select

from faceid_batch.db import session_scope
from faceid_batch.errors import Kind
from faceid_batch.faceid_client import Answer, CompareRequest
from faceid_batch.media import MediaError
from faceid_batch.models import Job, JobState, utcnow
from faceid_batch.persist import (
    BestFrameError,
    fail_job,
    fetch_best_frame,
    record_attempt,
    store_best_frame,
    store_result,
)
from faceid_batch.worker import Resources, celery_app, resources

log = logging.getLogger(__name__)

_ALLOWED_OPTIONS = {"name", "queue", "soft_time_limit", "time_limit"}
# Never let a countdown approach the broker's visibility timeout (see worker.py).
MAX_COUNTDOWN = 15 * 60


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


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    ceiling = min(cap, MAX_COUNTDOWN, base * (2 ** max(0, attempt - 1)))
    return random.uniform(0, ceiling)


class _JobLock:
    """A per-job Redis lock so a redelivered message never runs beside the first one."""

    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"

    def __init__(self, res: Resources, job_id: int, ttl: float) -> None:
        self.redis = res.redis
        self.key = f"faceid:job:{job_id}:lock"
        self.token = uuid.uuid4().hex
        self.ttl_ms = int(ttl * 1000)

    def __enter__(self) -> bool:
        return bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def __exit__(self, *exc: object) -> None:
        self.redis.eval(self._RELEASE, 1, self.key, self.token)


@faceid_task(name="faceid_batch.verify")
def verify(self: Task, job_id: int) -> str:
    """Run one verification job to its next state."""
    res = resources()
    s = res.settings
    lock_ttl = s.faceid_read_timeout + s.faceid_connect_timeout + 300
    with _JobLock(res, job_id, lock_ttl) as locked:
        if not locked:
            # Another delivery of this job is running; look again later rather than call twice.
            raise self.retry(countdown=30)
        return _verify_locked(self, res, job_id)


def _verify_locked(task: Task, res: Resources, job_id: int) -> str:
    s = res.settings
    with session_scope(s.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            log.error("job %s: no such job row; dropping the message", job_id)
            return "missing"
        if job.state in JobState.final():
            # Already answered: a redelivery must never pay for a second call.
            return job.state
        job.state = JobState.RUNNING.value
        job.started_at = job.started_at or utcnow()
        lane, photo_src, video_src = job.lane, job.photo_source, job.video_source
        liveness, validate = job.liveness_type, job.validate_data

    try:
        photo = res.stager.stage("photo", photo_src)
        video = res.stager.stage("video", video_src)
    except MediaError as exc:
        # Bad media fails the same way every time: final, and no API call is made.
        with session_scope(s.database_url) as session:
            fail_job(session, session.get(Job, job_id), "Local.MediaInvalid", str(exc))
        log.info("job %s: media refused before any call: %s", job_id, exc)
        return JobState.FAILED.value
    except (CosClientError, CosServiceError, requests.RequestException, OSError) as exc:
        log.warning("job %s: staging failed (%s); retrying", job_id, type(exc).__name__)
        raise task.retry(countdown=backoff(2, s.retry_base_delay, s.retry_max_delay)) from None

    with session_scope(s.database_url) as session:
        job = session.get(Job, job_id)
        job.photo_md5, job.photo_key = photo.info.md5, photo.key
        job.video_md5, job.video_key = video.info.md5, video.key

    request = CompareRequest(
        image_url=res.stager.presign(photo.key),
        image_md5=photo.info.md5,
        video_url=res.stager.presign(video.key),
        video_md5=video.info.md5,
        liveness_type=liveness,
        validate_data=validate,
    )
    res.limiter.acquire(lane)
    answer = res.faceid.compare(request)
    log.info("job %s: %s (RequestId %s, %d ms)", job_id, answer.code, answer.request_id,
             answer.latency_ms)
    return _apply_answer(task, res, job_id, answer)


def _apply_answer(task: Task, res: Resources, job_id: int, answer: Answer) -> str:
    s = res.settings
    kind = answer.rule.kind
    with session_scope(s.database_url) as session:
        job = session.scalar(select(Job).where(Job.id == job_id))
        record_attempt(session, job, answer)
        if kind in (Kind.SUCCESS, Kind.VERDICT):
            store_result(session, job, answer, s.pass_threshold)
            state = JobState.COMPLETED.value
        elif kind == Kind.REQUEST:
            # The same request would be refused again: final, not retried.
            fail_job(session, job, answer.code, answer.message or answer.rule.why)
            state = JobState.FAILED.value
        elif kind == Kind.TRANSIENT and job.attempts >= s.max_attempts:
            fail_job(session, job, answer.code,
                     f"gave up after {job.attempts} attempts: {answer.message or answer.rule.why}")
            state = JobState.FAILED.value
        else:
            job.state = JobState.RETRYING.value if kind == Kind.TRANSIENT else JobState.QUEUED.value
            state = job.state
        attempts = job.attempts

    if state == JobState.COMPLETED.value and answer.best_frame is not None:
        _keep_best_frame(res, job_id, answer)
    if state in (JobState.COMPLETED.value, JobState.FAILED.value):
        return state

    if kind == Kind.THROTTLED:
        delay = random.uniform(0.5, 2.0)  # someone else used the budget; not a failed attempt
    elif kind == Kind.ACCOUNT:
        delay = 60.0  # the account cannot call: keep the job queued, try much later
    else:
        delay = backoff(attempts, s.retry_base_delay, s.retry_max_delay)
    raise task.retry(countdown=delay)


def _keep_best_frame(res: Resources, job_id: int, answer: Answer) -> None:
    assert answer.best_frame is not None
    try:
        content, md5 = fetch_best_frame(
            res.stager.http, answer.best_frame, res.settings.bestframe_max_bytes
        )
    except BestFrameError as exc:
        # The verdict is stored already; a missing frame does not undo a paid answer.
        log.warning("job %s: best frame not kept: %s", job_id, exc)
        return
    with session_scope(res.settings.database_url) as session:
        store_best_frame(session, job_id, content, md5)
