"""The feeder (feeder.py): the database is the queue, Redis a short window topped up from it.

Each test drives ``Feeder.round`` in this process against a real redis-server and a real
database, with no worker: what a round sends is read back from the lane's Redis list and
from the jobs' rows.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from datetime import timedelta

import pytest
import redis
from sqlalchemy import func, select, update

from faceid_batch.bulk import batches
from faceid_batch.bulk.backfill import run_backfill
from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.messages import lane_depths, lane_lists
from faceid_batch.models import Job, JobState
from faceid_batch.scheduling import feeder as feeder_mod
from faceid_batch.scheduling import leases, schedule
from faceid_batch.scheduling.feeder import FEEDER_KEY, TAKEN_GRACE_SECONDS, FairShare, Feeder
from faceid_batch.scheduling.recovery import jobs_in_broker
from faceid_batch.times import utcnow
from faceid_batch.worker import Resources
from helpers import BUCKET, wait_until


def cos_manifest(path, prefix: str, n: int):
    """A manifest of ``n`` rows whose media are already in the bucket (nothing is read)."""
    lines = ["key,photo,video,liveness_type"]
    lines += [f"{prefix}-{i},cos://{BUCKET}/{prefix}/{i}.jpg,cos://{BUCKET}/{prefix}/{i}.mp4,"
              "SILENT" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


class Clock:
    """Time for a Feeder that a test moves on instead of sleeping."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    def time(self) -> float:
        return time.time() + self.ahead

    def advance(self, seconds: float) -> None:
        self.ahead += seconds


def feeder_for(settings, clock: Clock | None = None, **overrides) -> Feeder:
    clock = clock or Clock()
    return Feeder(Resources(settings.model_copy(update=overrides)), clock=clock.monotonic,
                  wall=clock.time)


def out_messages(client: redis.Redis, lane: str) -> list[int]:
    """The job ids of the messages in a lane's list, oldest first."""
    # kombu LPUSHes and BRPOPs: the oldest is last; one list per priority step.
    return [job_of(raw) for key in lane_lists(lane)
            for raw in reversed(client.lrange(key, 0, -1))]


def job_of(raw: bytes) -> int:
    """The job id of a verify message as kombu stores it (JSON, base64 body)."""
    return json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]


def take(client: redis.Redis, settings, lane: str, n: int) -> list[int]:
    """Do what ``n`` workers do with the oldest messages: pop them and claim the jobs."""
    taken = []
    for _ in range(n):
        # A worker's BRPOP: the first list (priority step) that holds a message.
        raw = next((m for m in map(client.rpop, lane_lists(lane)) if m is not None), None)
        if raw is None:
            break
        job_id = job_of(raw)
        with session_scope(settings.database_url) as s:
            assert schedule.claim(s, job_id, "test-lease")
        taken.append(job_id)
    return taken


def batch_of(url: str) -> dict[int, int]:
    with session_scope(url) as s:
        return dict(s.execute(select(Job.id, Job.batch_id)).all())


def count(url: str, *where) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Job).where(*where))


# -- fair share ---------------------------------------------------------------------------
def test_fair_share_splits_by_weight_and_gives_no_credit_for_time_away():
    fair = FairShare()
    assert fair.split(40, {1: 1.0, 2: 3.0}) == {1: 10, 2: 30}
    total = Counter()
    for _ in range(10):
        total.update(fair.split(7, {1: 1.0, 2: 1.0, None: 2.0}))
    assert total == {1: 17, 2: 18, None: 35} or total == {1: 18, 2: 17, None: 35}
    # Key 3 was away while 1 and 2 took picks: it joins at their level, no burst.
    fair = FairShare()
    for _ in range(50):
        fair.split(10, {1: 1.0, 2: 1.0})
    assert fair.split(30, {1: 1.0, 2: 1.0, 3: 1.0}) == {1: 10, 2: 10, 3: 10}
    # Picks a key could not use are given back.
    fair.refund(3, 10, 1.0)
    assert fair.split(2, {1: 1.0, 2: 1.0, 3: 1.0}) == {3: 2}


# -- topping up ---------------------------------------------------------------------------
def test_a_lane_is_topped_up_to_its_depth_and_the_backlog_stays_in_the_database(
        configured, tmp_path):
    settings = configured
    url = settings.database_url
    run_backfill(settings, cos_manifest(tmp_path / "m.csv", "top", 300))
    client = redis.Redis.from_url(settings.redis_url)
    feeder = feeder_for(settings)
    depth = settings.lane_depth
    assert depth == 40  # two seconds of the default 20/s
    assert feeder.round()["fed_backfill"] == depth
    assert lane_depths(client)["backfill"] == depth
    assert count(url, Job.due_at.is_not(None)) == 300 - depth
    assert count(url, Job.enqueued_at.is_not(None)) == depth
    assert "fed_backfill" not in feeder.round()  # full: nothing more
    # Workers take 15; the next round puts 15 back, the oldest rows first.
    taken = take(client, settings, "backfill", 15)
    assert taken == sorted(taken)
    assert feeder.round()["fed_backfill"] == 15
    assert lane_depths(client)["backfill"] == depth
    fed = out_messages(client, "backfill")
    assert fed == sorted(fed) and min(fed) > max(taken)


def test_batches_due_together_are_fed_by_weight(configured, tmp_path):
    settings = configured
    url = settings.database_url
    light = run_backfill(settings, cos_manifest(tmp_path / "a.csv", "light", 200), weight=1)
    heavy = run_backfill(settings, cos_manifest(tmp_path / "b.csv", "heavy", 200), weight=3)
    client = redis.Redis.from_url(settings.redis_url)
    clock = Clock()
    feeder = feeder_for(settings, clock)
    of = batch_of(url)
    got: Counter = Counter()
    for _ in range(4):
        feeder.round()
        got.update(of[i] for i in take(client, settings, "backfill", 40))
    assert got == {light.batch_id: 40, heavy.batch_id: 120}
    # A weight changed by the operator is used from the next reading on.
    batches.set_weight(settings, light.batch_id, 3)
    clock.advance(feeder_mod.KEYS_REFRESH_SECONDS)
    feeder.round()
    got = Counter(of[i] for i in take(client, settings, "backfill", 40))
    assert got == {light.batch_id: 20, heavy.batch_id: 20}


def test_a_batch_that_runs_dry_leaves_its_share_to_the_others(configured, tmp_path):
    settings = configured
    small = run_backfill(settings, cos_manifest(tmp_path / "a.csv", "small", 5))
    big = run_backfill(settings, cos_manifest(tmp_path / "b.csv", "big", 200))
    client = redis.Redis.from_url(settings.redis_url)
    assert feeder_for(settings).round()["fed_backfill"] == 40
    of = batch_of(settings.database_url)
    assert Counter(of[i] for i in out_messages(client, "backfill")) == {
        small.batch_id: 5, big.batch_id: 35}


def test_a_paused_batch_is_not_fed_and_is_fed_again_on_resume(configured, tmp_path):
    settings = configured
    url = settings.database_url
    paused = run_backfill(settings, cos_manifest(tmp_path / "a.csv", "pz", 30))
    other = run_backfill(settings, cos_manifest(tmp_path / "b.csv", "ot", 30))
    batches.pause(settings, paused.batch_id)
    client = redis.Redis.from_url(settings.redis_url)
    clock = Clock()
    feeder = feeder_for(settings, clock)
    feeder.round()
    of = batch_of(url)
    assert {of[i] for i in out_messages(client, "backfill")} == {other.batch_id}
    assert count(url, Job.batch_id == paused.batch_id, Job.state == "paused") == 30
    client.delete(*lane_lists("backfill"))
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.batch_id == other.batch_id).values(
            state="completed", due_at=None, enqueued_at=None))
    assert batches.resume(settings, paused.batch_id) == 30
    clock.advance(feeder_mod.KEYS_REFRESH_SECONDS)  # the feeder reads the due batches again
    assert feeder.round()["fed_backfill"] == 30
    assert {of[i] for i in out_messages(client, "backfill")} == {paused.batch_id}


def test_nothing_is_fed_while_the_breaker_is_open(configured, tmp_path):
    settings = configured
    run_backfill(settings, cos_manifest(tmp_path / "m.csv", "br", 10))
    client = redis.Redis.from_url(settings.redis_url)
    breaker = AccountBreaker(client, probe_after=1.0)
    breaker.record("UnauthorizedOperation.Arrears")
    assert breaker.state().open
    clock = Clock()
    feeder = feeder_for(settings, clock)
    assert "fed_backfill" not in feeder.round()
    assert lane_depths(client)["backfill"] == 0
    clock.advance(1.0)  # the probe is due: jobs are fed again, one of them may probe
    assert feeder.round()["fed_backfill"] == 10


def test_jobs_that_ran_before_go_before_fresh_rows_of_their_batch(configured, tmp_path):
    settings = configured
    url = settings.database_url
    run_backfill(settings, cos_manifest(tmp_path / "m.csv", "rt", 100))
    with session_scope(url) as s:
        last = s.scalar(select(func.max(Job.id)))
        # The newest row ran once and waits for its retry, due now.
        s.execute(update(Job).where(Job.id == last).values(
            state="retrying", started_at=utcnow(), due_at=utcnow()))
        # Another one's retry is not due yet: it is not fed.
        s.execute(update(Job).where(Job.id == last - 1).values(
            state="retrying", started_at=utcnow(), due_at=utcnow() + timedelta(minutes=5)))
    client = redis.Redis.from_url(settings.redis_url)
    feeder_for(settings, queue_depth=5).round()
    fed = out_messages(client, "backfill")
    assert fed[0] == last and last - 1 not in fed and len(fed) == 5


def test_a_message_that_could_not_be_sent_leaves_its_job_due(configured, tmp_path):
    settings = configured
    url = settings.database_url
    run_backfill(settings, cos_manifest(tmp_path / "m.csv", "sf", 10))

    def broken(ids, lane, priority=None):
        raise redis.ConnectionError("Redis went away mid-send")

    feeder = Feeder(Resources(settings), send=broken)
    with pytest.raises(redis.ConnectionError):
        feeder.round()
    assert count(url, Job.due_at.is_not(None)) == 10
    assert count(url, Job.enqueued_at.is_not(None)) == 0


def test_one_feeder_at_a_time_and_another_takes_over_when_it_dies(configured, tmp_path):
    settings = configured
    run_backfill(settings, cos_manifest(tmp_path / "m.csv", "lk", 100))
    client = redis.Redis.from_url(settings.redis_url)
    # The lock's lifetime is WORKER_LEASE_SECONDS; shortened here to see a takeover quickly.
    first, second = feeder_for(settings, worker_lease_seconds=2), \
        feeder_for(settings, worker_lease_seconds=2)
    assert first.round().get("fed_backfill") == 40
    take(client, settings, "backfill", 10)
    assert second.round() == {} and lane_depths(client)["backfill"] == 30
    assert first.round().get("fed_backfill") == 10
    # The first one's process dies: its lock runs out and the second feeds.
    take(client, settings, "backfill", 10)
    started = time.monotonic()
    wait_until(lambda: second.round().get("fed_backfill") == 10, 5, interval=0.1,
               what="the second feeder to take over")
    assert 1.0 < time.monotonic() - started <= 2.5
    assert client.get(FEEDER_KEY) == second.lock.token.encode()


# -- recovery -----------------------------------------------------------------------------
def test_lost_messages_are_due_again_and_messages_in_redis_are_not(configured, tmp_path):
    """A message out for seconds that is in no list and not taken is lost: the job is due
    again. The Redis transport pops a message before recording it as taken, so a worker
    killed in between loses it; a lost or flushed Redis loses all of them."""
    settings = configured
    url = settings.database_url
    ids = [submit(settings, JobSpec(f"lost-{i}", f"cos://{BUCKET}/p{i}.jpg",
                                    f"cos://{BUCKET}/v{i}.mp4", "SILENT"))[0]
           for i in range(4)]
    client = redis.Redis.from_url(settings.redis_url)
    assert jobs_in_broker(client, ["onboarding", "backfill"]) == set(ids)
    lost_raw = client.rpop("onboarding")           # the first: taken, then gone
    taken_raw = client.rpop("onboarding")          # the second: a dead worker's unacked one
    client.hset("unacked", "tag-of-a-dead-worker",
                json.dumps([json.loads(taken_raw), "", "onboarding"]))
    assert lost_raw is not None
    feeder = feeder_for(settings)
    # Within LOST_GRACE of its send a missing message may be in transit: left alone.
    assert feeder.resend_lost() == 0
    with session_scope(url) as s:
        s.execute(update(Job).values(enqueued_at=utcnow() - timedelta(seconds=6)))
    assert feeder.resend_lost() == 1
    with session_scope(url) as s:
        first = s.get(Job, ids[0])
        assert first.due_at is not None and first.enqueued_at is None
    # Taken half a minute ago and its job still not claimed: the process that took it is
    # gone (a prefork child killed with it in its pipe); Redis would keep it 15 minutes.
    now = client.time()[0]
    client.zadd("unacked_index", {"tag-of-a-dead-worker": now - 5})
    assert feeder.resend_lost() == 0
    client.zadd("unacked_index", {"tag-of-a-dead-worker": now - TAKEN_GRACE_SECONDS - 1})
    assert feeder.resend_lost() == 1
    with session_scope(url) as s:
        assert s.get(Job, ids[1]).due_at is not None
    # Redis flushed: every message out is lost, and the next rounds send them all again.
    client.flushall()
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.enqueued_at.is_not(None)).values(
            enqueued_at=utcnow() - timedelta(seconds=6)))
    assert feeder.resend_lost() == 2
    feeder.round()
    assert sorted(out_messages(client, "onboarding")) == ids


def test_jobs_of_a_gone_lease_are_due_again_but_not_while_redis_is_new(configured, tmp_path):
    settings = configured
    url = settings.database_url
    ttl = 2.0  # WORKER_LEASE_SECONDS, shortened to see the rule quickly
    res = Resources(settings.model_copy(update={"worker_lease_seconds": ttl}))
    client = res.redis
    wait_until(lambda: client.info("server")["uptime_in_seconds"] >= ttl, 5,
               what="Redis to be up for a lease lifetime")
    run_backfill(settings, cos_manifest(tmp_path / "m.csv", "ls", 6))
    alive = leases.WorkerLease(client, url, ttl).start()
    dead = leases.WorkerLease(client, url, ttl)
    dead.beat()  # written once, then its process "dies": no heartbeat
    with session_scope(url) as s:
        ids = list(s.scalars(select(Job.id).order_by(Job.id)))
        for job_id in ids[:3]:
            assert schedule.claim(s, job_id, alive.id)
        for job_id in ids[3:]:
            assert schedule.claim(s, job_id, dead.id)
    feeder = Feeder(res)
    # The first look writes Redis's epoch; no lease is judged until it is a lifetime old.
    assert feeder.recover_dead_leases() == 0
    time.sleep(ttl + 0.3)
    assert feeder.recover_dead_leases() == 3
    with session_scope(url) as s:
        rows = {j.id: j for j in s.scalars(select(Job))}
    assert all(rows[i].state == "running" and rows[i].lease_id == alive.id for i in ids[:3])
    assert all(rows[i].state == "queued" and rows[i].due_at is not None for i in ids[3:])
    # FLUSHALL takes the live lease too; it is back at the next heartbeat, and nothing is
    # judged before the new epoch is a lifetime old.
    client.flushall()
    assert feeder.recover_dead_leases() == 0
    time.sleep(ttl + 0.3)
    assert feeder.recover_dead_leases() == 0
    assert count(url, Job.state == JobState.RUNNING.value) == 3
    alive.stop()
