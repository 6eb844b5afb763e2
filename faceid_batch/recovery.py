"""The recovery sweep: re-send every job that no message in Redis will bring back.

- a paid answer parked in Redis while the database was down (written by the re-sent task),
  including one a task took out of the park and died before writing (``answers.take``):
  taken longer than STUCK_AFTER_SECONDS ago and no attempt row carries its RequestId;
- ``queued`` with ``enqueued_at`` NULL: the producer died between the commit and the send;
- ``queued``/``retrying`` whose ``next_attempt_at`` is long past: the retry message was lost
  (Redis restarted without it, or a worker holding it died and it was never restored);
- ``running`` not updated for STUCK_AFTER_SECONDS: its worker died mid-call;
- ``queued`` for STUCK_AFTER_SECONDS with no message for it anywhere in Redis (``lost``): the
  Redis transport pops a message (BRPOP) before it records it as unacknowledged, so a worker
  killed between the two loses it. Checked only while the queues hold at most
  LOST_SCAN_LIMIT messages (one atomic read of the queues and the unacknowledged set);
  behind a longer backlog such a job is found once the backlog has drained to that size.
Re-sending is safe: a job with a stored answer is never called again, and a per-job lock
keeps two deliveries from running side by side.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime, timedelta

from kombu.transport.redis import Channel as RedisChannel
from sqlalchemy import and_, or_, select, update

from faceid_batch import answers
from faceid_batch.db import session_scope
from faceid_batch.models import Attempt, Job, JobState, Lane, utcnow

log = logging.getLogger(__name__)
UNSENT_GRACE = timedelta(seconds=60)
LOST_SCAN_LIMIT = 10_000


def sweep_stuck_jobs(res, limit: int = 10_000) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Find stranded jobs and send them again; return counts by reason."""
    from faceid_batch.tasks import verify

    s = res.settings
    now = utcnow()
    overdue = now - timedelta(seconds=s.broker_visibility_timeout + 60)
    stuck = now - timedelta(seconds=s.stuck_after_seconds)
    counts = {"parked": 0, "unsent": 0, "overdue": 0, "stuck": 0, "before_redis_start": 0,
              "lost": 0}
    # One sweeper at a time across all workers.
    lock_ttl = max(5, int(s.sweep_interval_seconds))
    if not res.redis.set("faceid:sweep:lock", "1", nx=True, ex=lock_ttl):
        return counts
    # Messages live in Redis. One sent before this Redis server started may have been lost
    # with the old one (no AOF, or the last second before a crash with AOF): send it again.
    uptime = int(res.redis.info("server").get("uptime_in_seconds", 0))
    redis_started = now - timedelta(seconds=uptime)
    may_be_lost = and_(Job.state == JobState.QUEUED.value, Job.enqueued_at < stuck,
                       Job.updated_at < stuck)
    with session_scope(s.database_url) as session:
        suspects = session.scalar(select(Job.id).where(may_be_lost).limit(1)) is not None
    # Read the broker (only when some job has been queued that long) before the database: a
    # job still queued afterwards whose message was not in this snapshot was not in Redis
    # when the snapshot was taken.
    in_broker = jobs_in_broker(res.redis, [lane.value for lane in Lane]) if suspects else None
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
        if in_broker is not None:
            seen = {r[0] for r in rows}
            rows += [r for r in session.execute(
                select(Job.id, Job.lane, Job.state, Job.enqueued_at, Job.next_attempt_at).where(
                    may_be_lost).limit(limit)
            ).all() if r[0] not in in_broker and r[0] not in seen]
        for job_id, lane, state, enqueued_at, next_attempt_at in rows:
            reason = ("parked" if job_id in parked else
                      "stuck" if state == JobState.RUNNING.value else
                      "unsent" if enqueued_at is None else
                      "overdue" if next_attempt_at is not None
                      and _as_utc(next_attempt_at) < overdue else
                      "before_redis_start" if _as_utc(enqueued_at) < redis_started else "lost")
            verify.apply_async(args=[job_id], queue=lane)
            session.execute(update(Job).where(Job.id == job_id).values(
                enqueued_at=now, next_attempt_at=None, updated_at=now))
            counts[reason] += 1
    if any(counts.values()):
        log.warning("recovery sweep re-sent jobs: %s", counts)
    return counts


def jobs_in_broker(client, queues: list[str],  # type: ignore[no-untyped-def]
                   scan_limit: int = LOST_SCAN_LIMIT) -> set[int] | None:
    """The job ids of every verify message waiting in ``queues`` or taken and unacknowledged.

    One MULTI/EXEC reads all of it, so a message moving between a queue and the unacknowledged
    set is seen once. None when the queues hold more than ``scan_limit`` messages (too long to
    read on every sweep).
    """
    # kombu's Redis transport: a queue's priority sub-queues are "<queue><sep><priority>"
    # (none for 0); messages taken but not acknowledged live in the hash "unacked".
    keys = [q if pri == 0 else f"{q}{RedisChannel.sep}{pri}"
            for q in queues for pri in RedisChannel.priority_steps]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    pipe.hlen(RedisChannel.unacked_key)
    *lengths, unacked = pipe.execute()
    if sum(lengths) + unacked > scan_limit:
        return None
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.lrange(key, 0, -1)
    pipe.hvals(RedisChannel.unacked_key)
    *queued, taken = pipe.execute()
    found: set[int] = set()
    for raw in [m for q in queued for m in q]:
        found.update(_verify_job_ids(raw))
    for raw in taken:
        try:
            found.update(_verify_job_ids(json.loads(raw)[0]))
        except (ValueError, TypeError, IndexError, KeyError):
            continue
    return found


def _verify_job_ids(message) -> list[int]:  # type: ignore[no-untyped-def]
    """The job id a kombu message (JSON text or already decoded) carries, if it is a verify."""
    from faceid_batch.tasks import verify

    try:
        msg = json.loads(message) if isinstance(message, (bytes, str)) else message
        if msg.get("headers", {}).get("task") != verify.name:
            return []
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return [int(args[0])]
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        return []


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
