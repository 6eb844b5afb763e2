"""The backstop sweep, and the broker snapshot the feeder's lost-message check reads.

Leases (leases.py) and the feeder (feeder.py) bring back, within seconds, a job whose worker
died or whose message Redis lost. The sweep, run by the feeder every SWEEP_INTERVAL_SECONDS
(and by ``faceid-batch sweep``), catches what they cannot see:

- a paid answer parked in Redis while the database was down (``answers.park``), including
  one a task took out of the park and died before writing (``answers.take``): the job is
  made due, and its next run writes the answer without a call; the answer of a job that
  ended meanwhile is dropped;
- ``running`` not updated for STUCK_AFTER_SECONDS: its task hung in a worker that is still
  alive (its lease is renewed), or it was taken by a worker older than leases. Each hang is
  a try at staging: a job that hangs every worker it meets ends after STAGE_MAX_ATTEMPTS.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import timedelta
from typing import Any

import redis
from kombu.transport.redis import Channel as RedisChannel
from sqlalchemy import select
from sqlalchemy.orm import Session

from faceid_batch.db import session_scope
from faceid_batch.messages import VERIFY_TASK, lane_lists
from faceid_batch.models import Attempt, Job, JobState
from faceid_batch.parts import Parts
from faceid_batch.scheduling import answers, callbacks, schedule
from faceid_batch.scheduling.leases import LEASE_PREFIX
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)
LOST_SCAN_LIMIT = 10_000


def sweep_stuck_jobs(res: Parts) -> dict[str, int]:
    """Make due the jobs only the sweep can see; return counts by reason."""
    s = res.settings
    counts = {"parked": 0, "stuck": 0, "stuck_ended": 0}
    with session_scope(s.database_url) as session:
        _settle_taken_answers(res, session)
        parked = answers.parked_jobs(res.redis)
        if parked:
            states = dict(session.execute(
                select(Job.id, Job.state).where(Job.id.in_(parked))).all())
            for job_id in parked:
                if states.get(job_id) is None or states[job_id] in JobState.final():
                    # The job ended (or is gone) without it: nothing will write it now.
                    if answers.take(res.redis, job_id) is not None:
                        answers.settle(res.redis, job_id)
            counts["parked"] = schedule.make_due(
                session, [j for j in parked if states.get(j) not in (None, *JobState.final())])
        stuck, ended = schedule.requeue_stuck(
            session, utcnow() - timedelta(seconds=s.stuck_after_seconds),
            s.stage_max_attempts)
        for job_id in ended:
            callbacks.enqueue(session, job_id)
        counts["stuck"] = len(stuck)
        counts["stuck_ended"] = len(ended)
    if any(counts.values()):
        log.warning("recovery sweep made jobs due: %s", counts)
    return counts


def jobs_in_broker(client: redis.Redis, queues: list[str],
                   scan_limit: int = LOST_SCAN_LIMIT,
                   taken_within: float | None = None) -> set[int] | None:
    """The job ids of every verify message waiting in ``queues`` or taken and unacknowledged
    (with ``taken_within``: taken less than that many seconds ago).

    One MULTI/EXEC reads all of it, so a message moving between a queue and the unacknowledged
    set is seen once. None when the queues hold more than ``scan_limit`` messages (too long to
    read on every sweep).
    """
    # kombu's Redis transport: a queue's lists, one per priority step (messages.lane_lists);
    # messages taken but not acknowledged live in the hash "unacked", and when each was taken
    # in the sorted set "unacked_index".
    keys = [key for q in queues for key in lane_lists(q)]
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
    pipe.hgetall(RedisChannel.unacked_key)
    pipe.zrange(RedisChannel.unacked_index_key, 0, -1, withscores=True)
    pipe.time()
    *queued, taken, index, (secs, micros) = pipe.execute()
    found: set[int] = set()
    for raw in [m for q in queued for m in q]:
        found.update(_verify_job_ids(raw))
    since = dict(index)
    now = secs + micros / 1e6
    for tag, raw in taken.items():
        if taken_within is not None and now - since.get(tag, now) > taken_within:
            continue
        try:
            found.update(_verify_job_ids(json.loads(raw)[0]))
        except (ValueError, TypeError, IndexError, KeyError):
            continue
    return found


def _verify_job_ids(message: Any) -> list[int]:
    """The job id a kombu message (JSON text or already decoded) carries, if it is a verify."""
    try:
        msg = json.loads(message) if isinstance(message, (bytes, str)) else message
        if msg.get("headers", {}).get("task") != VERIFY_TASK:
            return []
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return [int(args[0])]
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        return []


def _settle_taken_answers(res: Parts, session: Session) -> None:
    """Forget taken answers that were written; park again those a dead task never wrote."""
    cutoff = time.time() - res.settings.stuck_after_seconds
    for job_id, (taken_at, answer, by) in answers.taken(res.redis).items():
        written = answer.request_id is not None and session.scalar(
            select(Attempt.id).where(Attempt.job_id == job_id,
                                     Attempt.request_id == answer.request_id)
        ) is not None
        state = session.scalar(select(Job.state).where(Job.id == job_id))
        if written or state is None or state in JobState.final() or answer.request_id is None:
            # Without a RequestId it was no paid answer: the job's own retry calls again.
            answers.settle(res.redis, job_id)
        elif taken_at > cutoff and (not by or res.redis.exists(LEASE_PREFIX + by)):
            continue  # being written right now, by a worker that is alive
        elif answers.restore(res.redis, job_id):
            log.warning("job %s: answer %s (RequestId %s) was taken and never written; "
                        "parked again", job_id, answer.code, answer.request_id)
