"""One job's run through its stages: claim it, stage its media (preflight on what was
fetched), wait for its rate-limit slot and the breaker, call, and hand the answer to
outcome.record. The ``verify`` task (tasks.py) runs it.

A message only says "this job may be due": the job runs if this worker *claims* it
(schedule.claim: waiting and due, taken for this process's lease in one guarded UPDATE), so
a message delivered twice, late or for a job another worker holds is dropped. Whatever the
job needs next (a retry after its backoff, waiting out the account breaker, Redis or the
database coming back) is written to its row as a due time; no task waits inside a worker on
a countdown message.
"""


from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import redis
import requests
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from requests import PreparedRequest
from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError

from faceid_batch import tenants
from faceid_batch.bulk.batches import batch_gate
from faceid_batch.call import margins
from faceid_batch.call.caps import ACCOUNT_WIDE
from faceid_batch.call.clock import EndpointClock
from faceid_batch.call.errors import backoff
from faceid_batch.call.faceid_client import Answer, CompareRequest
from faceid_batch.call.routing import Caller
from faceid_batch.db import session_scope, write_scope
from faceid_batch.intake.submit import is_remote
from faceid_batch.models import Job, JobState, table
from faceid_batch.ops import logs, metrics
from faceid_batch.outcome import record
from faceid_batch.resources import Resources
from faceid_batch.scheduling import answers, callbacks, schedule
from faceid_batch.stage import preflight
from faceid_batch.stage.media import MediaError
from faceid_batch.stage.storage import (
    SourceError,
    SourcesBusy,
    StagedMedia,
    display_source,
)
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)

# Redis was unreachable before the call: the job is due again after this long (plus jitter).
REDIS_AWAY_DELAY = 2.0
# The database was unreachable: the heartbeat gives the job back once it is there again.
DATABASE_AWAY_DELAY = 2.0
# Every fetch slot was taken: the job is due again after this long (plus jitter).
SOURCES_BUSY_DELAY = 1.0
MEDIA_INVALID = "Local.MediaInvalid"
STORE_UNAVAILABLE = "Local.StoreUnavailable"
STAGING_ERROR = "Local.StagingError"


class Ran(StrEnum):
    """What one run of a job came to (the ``verify`` task's result)."""

    COMPLETED = JobState.COMPLETED.value  # answered: a verdict is stored
    FAILED = JobState.FAILED.value  # ended without a verdict (or its batch was cancelled)
    REFUSED = JobState.REFUSED.value  # preflight predicted a refusal: no call
    RETRYING = JobState.RETRYING.value  # a counted try failed: due again after its backoff
    QUEUED = JobState.QUEUED.value  # given back, not a try (budget, breaker, busy, Redis)
    PAUSED = JobState.PAUSED.value  # its batch is paused: parked
    LOST = schedule.LOST  # another worker holds it now: nothing of this run was written
    NOT_CLAIMED = "not-claimed"  # held elsewhere, parked or not due: the message is dropped
    ALREADY_FINAL = "already-final"  # a message for an ended job: never paid twice
    MISSING = "missing"  # no such job
    DATABASE_AWAY = "database-unavailable"  # given back once the database is there again


@dataclass(frozen=True)
class ClaimedJob:
    """What a run needs of the job it claimed."""

    lane: str
    photo_source: str
    video_source: str
    photo_md5: str | None
    video_md5: str | None
    liveness_type: str
    validate_data: str | None
    video_key: str | None
    stage_attempts: int
    region: str | None  # None: FACEID_REGION
    tenant_id: int  # its tenant: the accounts it may be called by (tenants.allowed)


# A job's statements, built once (see persist: rebuilding them per job cost more CPU than
# running them).
_J = table(Job).c
_JOB_TO_RUN = select(
    _J.state, _J.batch_id, _J.lane, _J.photo_source, _J.video_source, _J.photo_md5,
    _J.video_md5, _J.liveness_type, _J.validate_data, _J.video_key, _J.stage_attempts,
    _J.region, _J.tenant_id,
).where(_J.id == bindparam("of_job"))


def run_job(res: Resources, job_id: int) -> Ran:
    """Claim the job for this process's lease and run it; return what it came to. Never
    leaves a claimed job without a way back: a failure of Redis or the database before the
    call gives it back to the schedule."""
    try:
        job = _claim(res, job_id)
    except DBAPIError as exc:
        # The claim may or may not have been written: a give-back only moves it if it was.
        return _database_away(res, job_id, exc)
    if isinstance(job, Ran):
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
            return _database_away(res, job_id, db_exc)
    except DBAPIError as exc:
        # Any paid answer is already parked in Redis (answers.park) and is written first on
        # the next run, without a new call.
        return _database_away(res, job_id, exc)


def _database_away(res: Resources, job_id: int, exc: DBAPIError) -> Ran:
    log.warning("job %s: database error (%s: %s); it goes back to the schedule when the "
                "database is back", job_id, type(exc.orig).__name__,
                str(exc.orig).splitlines()[0][:200] if str(exc.orig) else "")
    res.lease.release_later(job_id, DATABASE_AWAY_DELAY)
    return Ran.DATABASE_AWAY


def _claim(res: Resources, job_id: int) -> ClaimedJob | Ran:
    """The job, once claimed for this process's lease, or why it is not run."""
    with write_scope(res.settings.database_url) as session:
        row = session.execute(_JOB_TO_RUN, {"of_job": job_id}).first()
        if row is None:
            log.error("job %s: no such job row; dropping the message", job_id)
            return Ran.MISSING
        if row.state in JobState.final():
            # Already answered: a redelivery must never pay for a second call.
            return Ran.ALREADY_FINAL
        # A paused or cancelled batch: park or close the job without a call.
        if row.batch_id is not None and (
                gated := batch_gate(res, session, job_id, row.batch_id)) is not None:
            return Ran(gated)
        if not schedule.claim(session, job_id, res.lease.id):
            # Held by another worker, parked, or a retry whose time has not come: its row
            # says when it runs, and the feeder sends it then.
            return Ran.NOT_CLAIMED
    return ClaimedJob(**{k: v for k, v in row._mapping.items()
                         if k not in ("state", "batch_id")})


def _give_back(res: Resources, job_id: int, delay: float, state: Ran = Ran.QUEUED) -> Ran:
    """Put a job this worker holds back in the schedule, due after ``delay``; not an attempt."""
    with write_scope(res.settings.database_url) as session:
        held = schedule.reschedule(session, job_id, res.lease.id,
                                   utcnow() + timedelta(seconds=delay), JobState(state.value))
    return state if held else Ran.LOST


def _run_claimed(res: Resources, job_id: int, job: ClaimedJob) -> Ran:
    """The run's steps: a parked answer, else the breaker, staging, the call, its record."""
    parked = answers.take(res.redis, job_id, res.lease.id)
    if parked is not None:
        logs.bind(request_id=parked.request_id)
        # A paid answer that could not be written earlier: store it, never call again.
        return Ran(record.record_paid(res, job_id, parked))
    if (over := tenants.over_quota_cached(res.settings.database_url, job.tenant_id)):
        # Its tenant's billable calls today have reached its daily quota: no call (none is
        # billed) until the next UTC day.
        left = tenants.until_midnight()
        log.info("job %s: its tenant's calls today (%d) have reached its quota of %d a day; "
                 "due again at midnight UTC, in %.0f s", job_id, *over, left)
        return _give_back(res, job_id, left + random.uniform(0, 2))
    # An account of the job's region whose breaker lets it call (routing.py). This check
    # only saves staging a job no account could call: a closed state read in the last
    # second will do. The one before the call reads it afresh.
    region = job.region or res.settings.faceid_region
    allowed = _allowed_accounts(res, job)
    caller, wait = res.router.choose(region, max_age=1.0, allowed=allowed)
    if caller is None:
        if not res.router.serving(region, allowed):
            log.error("job %s: none of the accounts its tenant may use (%s) serves %s; "
                      "due again in %.0f s", job_id, ", ".join(allowed or ()) or "none",
                      region, wait)
        return _give_back(res, job_id, wait + random.uniform(0, 2))
    try:
        staged = _stage_media(res, job_id, job)
        if isinstance(staged, Ran):
            return staged
        answer = _signed_call(res, job_id, caller.client.clock_for(region),
                              lambda: _call(res, job_id, job, caller, region, *staged),
                              probe=lambda: caller.client.probe_clock(region))
    finally:
        res.router.done(caller)
    if isinstance(answer, Ran):
        return answer
    return Ran(record.record_paid(res, job_id, answer, staged))


def _allowed_accounts(res: Resources, job: ClaimedJob) -> tuple[str, ...] | None:
    """The accounts the job's tenant may be called by (None: any); read from the database
    at most every few seconds per tenant (tenants.allowed_cached)."""
    return tenants.allowed_cached(res.settings.database_url, job.tenant_id).accounts


def _signed_call(res: Resources, job_id: int, clock: EndpointClock,
                 call: Callable[[], Answer | Ran],
                 probe: Callable[[], None] | None = None) -> Answer | Ran:
    """``call`` on the endpoint's clock. The first call of this process to the endpoint
    goes alone (after one unsigned ``probe`` of the endpoint, when given), the others wait
    for its answer, which teaches the clock
    (EndpointClock.first_answer). A call refused for its timestamp
    (``AuthFailure.SignatureExpire``: errors.Rule.resign) is recorded, not counted, and made
    once more at once, signed on the clock its answer taught, on a new slot of the budget
    like any call; a second refusal in a row is the try its kind says."""
    if probe is not None and not clock.answered:
        # One HEAD of the endpoint teaches the clock before this process's first
        # calls: they wait for its round trip, not for a whole API call.
        with clock.first_answer():
            if not clock.answered:
                probe()
    with clock.first_answer():  # if the probe got no answer, the first call goes alone
        answer = call()
    if isinstance(answer, Ran) or not answer.rule.resign:
        return answer
    log.warning("job %s: %s: signed again on the API's clock (offset %+.1f s), not counted",
                job_id, answer.code, clock.offset)
    if not record.record_resigned(res, job_id, answer):
        return Ran.LOST
    return call()


def _call(res: Resources, job_id: int, job: ClaimedJob, caller: Caller, region: str,
          photo: StagedMedia, video: StagedMedia) -> Answer | Ran:
    """One FaceID call by ``caller``'s account on a slot of its budget
    (GlobalRateLimiter.call), or the job given back if its breaker opened while it waited
    for its slot."""
    prepared: list[PreparedRequest] = []
    breaker_wait = [0.0]
    stager = res.stager_for(job.region)
    res.router.budget(caller)  # its share of a learned account-wide cap, if any

    def ready() -> bool:
        # The breaker may have opened while this job waited for its slot; if not, the
        # request is signed now, so the send costs almost nothing.
        may_call, breaker_wait[0] = caller.breaker.before_call()
        if may_call:
            prepared.append(caller.client.prepare(CompareRequest(
                image_url=stager.presign(photo.key), image_md5=photo.info.md5,
                video_url=stager.presign(video.key), video_md5=video.info.md5,
                liveness_type=job.liveness_type, validate_data=job.validate_data), region))
        elif res.router.others_may_call(region, caller, _allowed_accounts(res, job)):
            breaker_wait[0] = 0.0  # another account takes it at once
        return may_call

    def too_late() -> None:
        metrics.RATE_LIMIT_TOO_LATE.inc()
        log.info("job %s: not sent on its rate-limit slot (its thread got there too late); "
                 "reserving a new slot", job_id)

    def send(send_at: float, send_by: float, on_sent: Callable[[float], None]) -> Answer:
        # The client sleeps until the slot at the first write, the request built and a
        # connection in hand (see faceid_client), so it leaves as close to it as it can.
        return caller.client.send(prepared[0], on_sent=on_sent, send_by=send_by,
                                  send_at=send_at)

    # Sign-ups wait for a slot in their tenant's line: one tenant's burst of them does not
    # queue ahead of another's (ratelimit.py).
    sent = caller.limiter.call(job.lane, send, ready=ready, on_too_late=too_late,
                               line=str(job.tenant_id))
    if sent is None:
        return _give_back(res, job_id, breaker_wait[0] + random.uniform(0, 2))
    answer, late = sent.result, sent.late or 0.0
    answer.waited_ms = int(sent.waited * 1000)
    answer.account, answer.region = caller.name, region
    metrics.RATE_LIMIT_WAIT.observe(sent.waited)
    logs.bind(request_id=answer.request_id)
    metrics.observe_call(answer.code, answer.rule.kind, answer.latency_ms, late)
    log.info("job %s: %s (RequestId %s, %d ms, %d ms waiting for its slot, sent %.1f ms "
             "after it, account %s, %s)", job_id, answer.code, answer.request_id,
             answer.latency_ms, answer.waited_ms, late * 1000, caller.name, region)
    caller.breaker.record(answer.code if answer.rule.trips_breaker else None)
    if answer.code == margins.OWN_LIMIT:
        # One of the API's sliding seconds held more than the account's limit by its own
        # stamps: the account's window widens (sent latency_ms ago, on Redis's clock).
        res.margins.hit(caller.name, answer.latency_ms / 1000)
    if answer.code in ACCOUNT_WIDE:
        # Sent latency_ms ago (reckoned on Redis's clock): an answer to a call sent before
        # the last cut cuts nothing.
        res.caps.hit(caller.account.owner, answer.code, answer.latency_ms / 1000)
    return answer


def _stage_media(res: Resources, job_id: int,
                 job: ClaimedJob) -> tuple[StagedMedia, StagedMedia] | Ran:
    """Stage the job's two media, preflighting what was fetched; the pair, or what the job
    became (refused, failed, or given back to the schedule)."""
    s = res.settings
    # Local files were preflighted at submit; remote ones are read here, on the copy staging
    # makes anyway, before anything is uploaded or called.
    findings: list[dict[str, Any]] = []

    def remote_check(kind: str, source: str) -> Callable[[str], None] | None:
        if not is_remote(source):
            return None

        def inspect(path: str) -> None:
            photo, video = (path, None) if kind == "photo" else (None, path)
            findings.extend(preflight.check(s, job.liveness_type, photo, video,
                                            names={kind: display_source(source)}).items)
        return inspect

    try:
        stager = res.stager_for(job.region)
        photo = stager.stage("photo", job.photo_source, job.photo_md5,
                                 remote_check("photo", job.photo_source), job_id=job_id)
        video = None
        if preflight.Findings(findings).refusal is None:
            # An earlier attempt recorded the key: the video is likely in the bucket already.
            video = stager.stage("video", job.video_source, job.video_md5,
                                     remote_check("video", job.video_source),
                                     check_existing=job.video_key is not None, job_id=job_id)
    except MediaError as exc:
        # Bad media fails the same way every time: final, and no API call is made.
        return _end_failed(res, job_id, MEDIA_INVALID, str(exc))
    except SourcesBusy:
        # Every fetch slot of this process is taken (sources that answer slowly): the job
        # waits in the schedule, not on a thread; this is not one of its tries.
        return _give_back(res, job_id, SOURCES_BUSY_DELAY + random.uniform(0, 1))
    except SourceError as exc:
        if exc.final:
            return _end_failed(res, job_id, exc.code, str(exc))
        return _staging_failed(res, job_id, job.stage_attempts, exc.code, str(exc))
    except (CosClientError, CosServiceError, requests.RequestException, OSError) as exc:
        return _staging_failed(res, job_id, job.stage_attempts, STORE_UNAVAILABLE,
                               f"the media store: {type(exc).__name__}")
    except (redis.RedisError, DBAPIError):
        raise  # our own parts away: run_job gives the job back, not a try
    except Exception as exc:  # noqa: BLE001 - see below
        # Anything else a producer's media can make staging raise (a file crafted against
        # a reader) is a try like the others: the job ends within the bound, not never.
        log.exception("job %s: staging raised", job_id)
        return _staging_failed(res, job_id, job.stage_attempts, STAGING_ERROR,
                               f"staging failed ({type(exc).__name__})")
    if findings and (refused := _store_preflight(res, job_id, findings)) is not None:
        return refused
    if video is None:  # pragma: no cover - a refusal above returned already
        raise RuntimeError("video not staged without a refusal")
    return photo, video


def _staging_failed(res: Resources, job_id: int, tries_before: int, code: str,
                    why: str) -> Ran:
    """One more failed try at staging: due again after its backoff, or, once
    STAGE_MAX_ATTEMPTS tries have failed, the end of the job with ``code``."""
    s = res.settings
    tries = tries_before + 1
    if tries >= s.stage_max_attempts:
        return _end_failed(res, job_id, code, f"gave up after {tries} tries at staging the "
                                              f"media: {why}")
    delay = backoff(tries, s.retry_base_delay, s.retry_max_delay)
    log.warning("job %s: staging failed (%s: %s); due again in %.1fs", job_id, code, why,
                delay)
    with write_scope(s.database_url) as session:
        held = schedule.staging_failed(session, job_id, res.lease.id,
                                       utcnow() + timedelta(seconds=delay))
    return Ran.RETRYING if held else Ran.LOST


def _end_failed(res: Resources, job_id: int, code: str, why: str) -> Ran:
    """End a job this worker holds, before any call, with ``code``."""
    with write_scope(res.settings.database_url) as session:
        if not schedule.fail(session, job_id, res.lease.id, code, why):
            return Ran.LOST
        callbacks.enqueue(session, job_id)
    log.info("job %s: ended before any call: %s: %s", job_id, code, why)
    metrics.JOBS_FINISHED.labels(state=JobState.FAILED.value).inc()
    return Ran.FAILED


def _store_preflight(res: Resources, job_id: int,
                     findings: list[dict[str, Any]]) -> Ran | None:
    """Keep the worker's preflight findings on the job; refuse it if one says so."""
    refusal = preflight.Findings(findings).refusal
    with session_scope(res.settings.database_url) as session:
        before = list(session.scalar(select(Job.preflight).where(Job.id == job_id)) or [])
        # A retry stages (and reads) again: only findings not kept yet are added.
        stored = before + [f for f in findings if f not in before]
        if refusal is None:
            if stored != before and not schedule.write(session, job_id, res.lease.id,
                                                       {"preflight": stored}):
                return Ran.LOST
            return None
        if not schedule.refuse(session, job_id, res.lease.id, refusal["code"],
                               preflight.describe(refusal), stored):
            return Ran.LOST
        callbacks.enqueue(session, job_id)
    log.info("job %s: refused by preflight before any call: %s", job_id,
             preflight.describe(refusal))
    return Ran.REFUSED


