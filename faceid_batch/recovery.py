"""The recovery sweep: re-send every job that no message in Redis will bring back.

- a paid answer parked in Redis while the database was down (written by the re-sent task),
  including one a task took out of the park and died before writing (``answers.take``):
  taken longer than STUCK_AFTER_SECONDS ago and no attempt row carries its RequestId;
- ``queued`` with ``enqueued_at`` NULL: the producer died between the commit and the send;
- ``queued``/``retrying`` whose ``next_attempt_at`` is long past: the retry message was lost
  (Redis restarted without it, or a worker holding it died and it was never restored);
- ``running`` not updated for STUCK_AFTER_SECONDS: its worker died mid-call.
Re-sending is safe: a job with a stored answer is never called again, and a per-job lock
keeps two deliveries from running side by side.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select, update

from faceid_batch import answers
from faceid_batch.db import session_scope
from faceid_batch.models import Attempt, Job, JobState, utcnow

log = logging.getLogger(__name__)
UNSENT_GRACE = timedelta(seconds=60)


def sweep_stuck_jobs(res, limit: int = 10_000) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Find stranded jobs and send them again; return counts by reason."""
    from faceid_batch.tasks import verify

    s = res.settings
    now = utcnow()
    overdue = now - timedelta(seconds=s.broker_visibility_timeout + 60)
    stuck = now - timedelta(seconds=s.stuck_after_seconds)
    counts = {"parked": 0, "unsent": 0, "overdue": 0, "stuck": 0, "before_redis_start": 0}
    # One sweeper at a time across all workers.
    lock_ttl = max(5, int(s.sweep_interval_seconds))
    if not res.redis.set("faceid:sweep:lock", "1", nx=True, ex=lock_ttl):
        return counts
    # Messages live in Redis. One sent before this Redis server started may have been lost
    # with the old one (no AOF, or the last second before a crash with AOF): send it again.
    uptime = int(res.redis.info("server").get("uptime_in_seconds", 0))
    redis_started = now - timedelta(seconds=uptime)
    with session_scope(s.database_url) as session:
        _settle_taken_answers(res, session)
        parked = set(answers.parked_jobs(res.redis))
        rows = session.execute(
            select(Job.id, Job.lane, Job.state, Job.enqueued_at, Job.next_attempt_at).where(or_(
                Job.id.in_(parked) if parked else False,
                and_(Job.state == JobState.QUEUED.value, Job.enqueued_at.is_(None),
                     Job.created_at < now - UNSENT_GRACE),
                and_(Job.state.in_([JobState.QUEUED.value, JobState.RETRYING.value]),
                     Job.next_attempt_at < overdue),
                and_(Job.state == JobState.RUNNING.value, Job.updated_at < stuck),
                and_(Job.state.in_([JobState.QUEUED.value, JobState.RETRYING.value]),
                     Job.enqueued_at < redis_started),
            )).limit(limit)
        ).all()
        for job_id, lane, state, enqueued_at, next_attempt_at in rows:
            reason = ("parked" if job_id in parked else
                      "stuck" if state == JobState.RUNNING.value else
                      "unsent" if enqueued_at is None else
                      "overdue" if next_attempt_at is not None
                      and _as_utc(next_attempt_at) < overdue else "before_redis_start")
            verify.apply_async(args=[job_id], queue=lane)
            session.execute(update(Job).where(Job.id == job_id).values(
                enqueued_at=now, next_attempt_at=None, updated_at=now))
            counts[reason] += 1
    if any(counts.values()):
        log.warning("recovery sweep re-sent jobs: %s", counts)
    return counts


def _as_utc(when: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC).
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _settle_taken_answers(res, session) -> None:  # type: ignore[no-untyped-def]
    """Forget taken answers that were written; park again those a dead task never wrote."""
    cutoff = time.time() - res.settings.stuck_after_seconds
    for job_id, (taken_at, answer) in answers.taken(res.redis).items():
        if taken_at > cutoff:
            continue  # probably being written right now
        written = answer.request_id is not None and session.scalar(
            select(Attempt.id).where(Attempt.job_id == job_id,
                                     Attempt.request_id == answer.request_id)
        ) is not None
        state = session.scalar(select(Job.state).where(Job.id == job_id))
        if written or state is None or state in JobState.final() or answer.request_id is None:
            # Without a RequestId it was no paid answer: the job's own retry calls again.
            answers.settle(res.redis, job_id)
        elif answers.restore(res.redis, job_id):
            log.warning("job %s: answer %s (RequestId %s) was taken and never written; "
                        "parked again", job_id, answer.code, answer.request_id)
