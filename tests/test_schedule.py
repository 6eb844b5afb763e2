"""The schedule of record (schedule.py) and how a task keeps to it (pipeline.run_job).

A message only says "this job may be due": a job runs when a worker claims it, and
whatever happens before the call (Redis or the database away, the breaker open) puts it back
in the schedule with a due time instead of a countdown message held in the worker.
"""

from __future__ import annotations

from datetime import timedelta

import redis
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from faceid_batch import messages, pipeline
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.messages import lane_depths
from faceid_batch.models import Job
from faceid_batch.scheduling import answers, schedule
from faceid_batch.times import utcnow
from faceid_batch.worker import resources
from helpers import BUCKET


def new_job(settings, key: str, lane: str = "backfill") -> int:
    return submit(settings, JobSpec(key, f"cos://{BUCKET}/{key}.jpg",
                                    f"cos://{BUCKET}/{key}.mp4", "SILENT", lane=lane))[0]


def row(url: str, job_id: int) -> Job:
    with session_scope(url) as s:
        return s.get(Job, job_id)


def test_a_job_is_claimed_once_and_a_retry_only_when_due(configured):
    settings = configured
    url = settings.database_url
    job_id = new_job(settings, "c-1")
    with session_scope(url) as s:
        assert schedule.claim(s, job_id, "lease-a")
        assert not schedule.claim(s, job_id, "lease-b")  # a second delivery is dropped
    job = row(url, job_id)
    assert (job.state, job.lease_id, job.due_at, job.enqueued_at) == ("running", "lease-a",
                                                                      None, None)
    assert job.started_at is not None
    # Only the holder moves it; a retry waits for its due time, whatever message comes.
    later = utcnow() + timedelta(minutes=5)
    with session_scope(url) as s:
        assert not schedule.reschedule(s, job_id, "lease-b", later, "retrying")
        assert schedule.reschedule(s, job_id, "lease-a", later, "retrying")
        assert not schedule.claim(s, job_id, "lease-a")
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(due_at=utcnow()))
        assert schedule.claim(s, job_id, "lease-b")
    assert row(url, job_id).lease_id == "lease-b"


def test_onboarding_is_sent_at_once_and_backfill_is_only_stored_due(configured):
    settings = configured
    client = redis.Redis.from_url(settings.redis_url)
    on = new_job(settings, "on-1", lane="onboarding")
    back = new_job(settings, "back-1", lane="backfill")
    assert lane_depths(client) == {"onboarding": 1, "backfill": 0}
    assert row(settings.database_url, on).enqueued_at is not None
    assert row(settings.database_url, on).due_at is None
    assert row(settings.database_url, back).due_at is not None


def test_onboarding_submitted_while_redis_is_away_is_kept_due(configured, monkeypatch):
    settings = configured

    def refused(*args, **kwargs):
        raise redis.ConnectionError("Redis is away")

    monkeypatch.setattr(messages, "send_verify", refused)
    job_id = new_job(settings, "away-1", lane="onboarding")
    job = row(settings.database_url, job_id)
    # Accepted and due: the feeder sends it once Redis is back.
    assert (job.state, job.enqueued_at) == ("queued", None) and job.due_at is not None


def test_redis_away_before_the_call_gives_the_job_back_to_the_schedule(configured,
                                                                        monkeypatch):
    settings = configured
    res = resources()
    job_id = new_job(settings, "r-1")

    def away(*args, **kwargs):
        raise redis.ConnectionError("Error 111 connecting to redis")

    monkeypatch.setattr(answers, "take", away)
    assert pipeline.run_job(res, job_id) == pipeline.Ran.QUEUED
    job = row(settings.database_url, job_id)
    assert job.state == "queued" and job.attempts == 0
    assert job.due_at is not None and job.due_at.replace(tzinfo=None) > \
        utcnow().replace(tzinfo=None)


def test_database_away_gives_the_job_back_once_it_returns(configured, monkeypatch):
    settings = configured
    res = resources()
    job_id = new_job(settings, "d-1")

    def away(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    # The first step after the claim meets the database error.
    monkeypatch.setattr(answers, "take", away)
    assert pipeline.run_job(res, job_id) == pipeline.Ran.DATABASE_AWAY
    assert row(settings.database_url, job_id).state == "running"
    assert res.lease.pending() == [job_id]
    # The heartbeat gives it back when the database takes writes again.
    assert res.lease.flush_releases() == 1
    job = row(settings.database_url, job_id)
    assert job.state == "queued" and job.due_at is not None and res.lease.pending() == []


def test_a_message_for_a_job_another_worker_holds_is_dropped(configured):
    settings = configured
    res = resources()
    job_id = new_job(settings, "h-1")
    with session_scope(settings.database_url) as s:
        assert schedule.claim(s, job_id, "another-workers-lease")
    assert pipeline.run_job(res, job_id) == pipeline.Ran.NOT_CLAIMED
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(Job.lease_id).where(Job.id == job_id)) == \
            "another-workers-lease"
