"""Nothing lost, nothing paid twice: break a real part in the middle of a batch.

Each test drives real Celery worker processes (threads pool) on a real redis-server, a real
database and the FaceID simulator, breaks one part while calls are in flight — a worker
SIGKILLed, redis-server killed or flushed, the database unavailable, the API failing or
refusing the account — and checks from the database and from the simulator's own call log
that every job ended with its stored outcome and that no paid call was repeated beyond the
honest bound.

The recovery promises (a killed worker's jobs run again within 30 s, every job answered
within 30 s of Redis being back) are tested at the default settings: the worker lease, the
visibility timeout and the sweep are not shortened. Other tests shorten the read timeout
and the breaker's probe delay only to run quickly.

The figures each test measured are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url

from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.call.faceid_client import Answer
from faceid_batch.db import normalise_url, session_scope
from faceid_batch.intake.submit import JobSpec, insert_job, submit, validate_spec
from faceid_batch.local.samples import write_pair
from faceid_batch.local.services import RedisServer, free_port
from faceid_batch.messages import lane_depths
from faceid_batch.models import Attempt, Job, Result
from faceid_batch.scheduling import answers, leases
from faceid_batch.scheduling.recovery import sweep_stuck_jobs
from faceid_batch.worker import Resources
from faceid_sim.liveness import default_sim
from helpers import file_md5, sim_calls, sim_config, sim_script, wait_until, worker_log

CONCURRENCY = 8
# Only to run quickly where recovery time is not what is tested: a call given up after 5 s,
# the account breaker's probe after one second.
FAST = {
    "FACEID_READ_TIMEOUT": "5",
    "BREAKER_PROBE_AFTER": "1",
}
FAKE = "FailedOperation.LivessDetectFake"
BAD = "InvalidParameterValue"
TRANSIENT = ["FailedOperation.DownLoadTimeoutError", "InternalError",
             "FailedOperation.LipNetFailed"]
# The promises at the default settings (WORKER_LEASE_SECONDS 10, visibility timeout 900 s).
RECOVERY_S = 30.0


# --- a batch and what each job must end with --------------------------------------------

# What the simulator is scripted to answer for each planned outcome. More scripted answers
# than calls: a call lost in flight must not use up the job's planned answer.
SCRIPTS = {
    "pass": None,
    "fake": [FAKE] * 5,
    "bad": [BAD] * 5,
    "exhaust": ["InternalError"] * 30,
}


@dataclass
class Batch:
    ids: list[int] = field(default_factory=list)
    video_md5: dict[int, str] = field(default_factory=dict)
    photo_md5: dict[int, str] = field(default_factory=dict)
    plan: dict[int, str] = field(default_factory=dict)  # job id -> a SCRIPTS key

    def job_of(self, md5: str) -> int:
        return next(i for i, m in self.video_md5.items() if m == md5)


def mixed_plan(i: int) -> str:
    """Most jobs pass; every 7th is a spoof verdict, every 11th a request the API refuses."""
    return "bad" if i % 11 == 5 else "fake" if i % 7 == 3 else "pass"


def make_batch(control_url: str, media: Path, n: int, send, plan_of=mixed_plan) -> Batch:
    """Write media, script the simulator for each job's planned outcome, submit via ``send``."""
    batch = Batch()
    for i in range(n):
        photo, video = write_pair(media, i)
        plan = plan_of(i)
        vmd5 = file_md5(video)
        if SCRIPTS[plan]:
            sim_script(control_url, vmd5, SCRIPTS[plan])
        job_id = send(JobSpec(f"chaos-{i}", str(photo), str(video), "SILENT", lane="backfill"))
        batch.ids.append(job_id)
        batch.video_md5[job_id] = vmd5
        batch.photo_md5[job_id] = file_md5(photo)
        batch.plan[job_id] = plan
    return batch


def submitter(settings):
    return lambda spec: submit(settings, spec)[0]


def states(url: str, ids: list[int]) -> Counter:
    with session_scope(url) as s:
        return Counter(s.scalars(select(Job.state).where(Job.id.in_(ids))).all())


def wait_final(url: str, ids: list[int], timeout: float) -> None:
    """Wait until every job is completed or failed; on timeout say which are not."""
    try:
        wait_until(lambda: (lambda st: st["completed"] + st["failed"] == len(ids))(
            states(url, ids)), timeout, what="every job to end")
    except AssertionError:
        with session_scope(url) as s:
            left = s.execute(select(Job.id, Job.state, Job.attempts).where(
                Job.id.in_(ids), Job.state.not_in(["completed", "failed"]))).all()
        raise AssertionError(f"after {timeout}s, {len(left)} job(s) had not ended: "
                             f"{[tuple(r) for r in left]}") from None


def check_outcomes(url: str, batch: Batch, calls: list[dict], max_attempts: int = 6) -> dict:
    """Assert every job's stored outcome and the call accounting; return the figures."""
    with session_scope(url) as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(batch.ids)))}
        results = {r.job_id: r for r in s.scalars(select(Result))}
        attempts = s.scalars(select(Attempt).order_by(Attempt.id)).all()
    calls_of: dict[int, list[dict]] = {i: [] for i in batch.ids}
    for c in calls:
        calls_of[batch.job_of(c["video_md5"])].append(c)
    attempts_of: dict[int, list[Attempt]] = {i: [] for i in batch.ids}
    for a in attempts:
        attempts_of[a.job_id].append(a)

    duplicates = lost = paid_after_answer = 0
    for job_id in batch.ids:
        job, plan, mine = jobs[job_id], batch.plan[job_id], calls_of[job_id]
        if plan == "bad":
            assert (job.state, job.result_code) == ("failed", BAD), job_id
        elif plan == "exhaust":
            assert (job.state, job.result_code) == ("failed", "InternalError"), job_id
            assert job.attempts == max_attempts, (job_id, job.attempts)
        else:
            assert job.state == "completed", (job_id, job.state, job.result_code)
            res = results[job_id]
            if plan == "fake":
                assert (res.result, res.passed) == (FAKE, False), job_id
            else:
                want = round(default_sim(batch.photo_md5[job_id], batch.video_md5[job_id]), 2)
                assert (res.result, res.passed, res.sim) == ("Success", True, want), job_id
            # The stored answer is one the API really gave for this job.
            assert res.request_id in {c["request_id"] for c in mine}, job_id
            stored_at = res.created_at.replace(tzinfo=res.created_at.tzinfo or UTC)
            paid_after_answer += sum(1 for c in mine if c["charged"]
                                     and c["t_start"] > stored_at.timestamp())
        if plan in ("bad", "exhaust"):
            assert job_id not in results, job_id
        assert job.attempts <= max_attempts, (job_id, job.attempts)
        # Every attempt row is a call the API saw; a call without a row is an answer lost
        # with the process that was waiting for it.
        rows = [a.request_id for a in attempts_of[job_id]]
        assert len(set(rows)) == len(rows), job_id
        assert set(rows) <= {c["request_id"] for c in mine}, job_id
        lost += len(mine) - len(rows)
        duplicates += max(0, sum(1 for c in mine if c["charged"]) - 1)
    assert paid_after_answer == 0, "a paid call was made for a job that had its answer"
    return {
        "jobs": len(batch.ids),
        "calls": len(calls),
        "charged": sum(1 for c in calls if c["charged"]),
        "duplicate_paid": duplicates,
        "answers_lost": lost,
        "attempts_per_job": dict(sorted(Counter(j.attempts for j in jobs.values()).items())),
    }


def report(name: str, **figures) -> None:
    print(f"\n[chaos] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def parked_in_log(log: str) -> dict[int, tuple[str, str]]:
    """Answers a worker parked in Redis (answers.park): job id -> (code, RequestId)."""
    found = re.findall(r"job (\d+): database unavailable; answer (\S+) \(RequestId (\S+)\) "
                       r"parked in Redis", log)
    return {int(job): (code, rid) for job, code, rid in found}


def in_flight(calls: list[dict], at: float) -> int:
    return sum(1 for c in calls if c["t_start"] < at < c["t_end"])


def running_jobs(url: str, ids: list[int]) -> dict[int, str]:
    """Running jobs of ``ids`` and the lease that holds each."""
    with session_scope(url) as s:
        return dict(s.execute(select(Job.id, Job.lease_id).where(
            Job.id.in_(ids), Job.state == "running")).all())


def first_call_after(calls: list[dict], batch: Batch, job_id: int, at: float) -> float | None:
    starts = [c["t_start"] for c in calls
              if batch.job_of(c["video_md5"]) == job_id and c["t_start"] > at]
    return min(starts) if starts else None


# --- 1. a worker SIGKILLed mid-batch -------------------------------------------------------

def test_worker_sigkilled_with_calls_in_flight_at_default_settings(configured, sim_control,
                                                                     start_worker, tmp_path):
    """Default settings: the jobs a SIGKILLed worker held run again on another worker within
    30 s (its lease runs out after 10 s), not after the 900 s visibility timeout; the only
    calls paid twice are the ones it had in flight."""
    settings = configured
    url = settings.database_url
    sim_config(sim_control, latency={"fixed": 4.0})
    w1 = start_worker("w1", 30)
    batch = make_batch(sim_control, tmp_path / "media", 70, submitter(settings))
    wait_until(lambda: len(running_jobs(url, batch.ids)) >= 28, 60, interval=0.1,
               what="w1 to hold 28 jobs")
    time.sleep(2.0)  # at 20 calls/s their calls have left
    held = running_jobs(url, batch.ids)
    killed_at = time.time()
    w1.kill()
    start_worker("w2", 30)
    wait_final(url, batch.ids, 120)

    calls = sim_calls(sim_control)
    figures = check_outcomes(url, batch, calls)
    again = {job_id: first_call_after(calls, batch, job_id, killed_at) for job_id in held}
    delays = sorted(t - killed_at for t in again.values() if t is not None)
    report("worker SIGKILL at default settings", held_at_kill=len(held),
           in_flight_at_kill=in_flight(calls, killed_at),
           held_running_again_s=f"{delays[0]:.1f}-{delays[-1]:.1f}" if delays else "-",
           **figures)
    assert len(set(held.values())) == 1  # all held by w1's one lease
    assert in_flight(calls, killed_at) >= 20, "too few calls in flight: the test proved little"
    # Every job it held was called again, by w2, within 30 s of the kill.
    assert all(t is not None for t in again.values()), again
    assert delays[-1] <= RECOVERY_S, delays
    # A threads-pool worker loses every answer in flight when it is killed, and only those.
    assert figures["duplicate_paid"] <= in_flight(calls, killed_at)
    assert figures["answers_lost"] <= in_flight(calls, killed_at)
    with session_scope(url) as s:
        holders = set(s.scalars(select(Job.lease_id).where(Job.id.in_(list(held)))))
    assert not holders & set(held.values()), "a held job was finished under the dead lease"


def _pool_children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_prefork_child_sigkilled_pays_at_most_once_per_kill(configured, sim_control,
                                                            start_worker, tmp_path):
    """With the prefork pool a process holds one call, so a kill costs at most one call."""
    settings = configured
    url = settings.database_url
    sim_config(sim_control, latency={"fixed": 1.0})
    w1 = start_worker("w1", 3, extra_args=("-P", "prefork"), **FAST)
    batch = make_batch(sim_control, tmp_path / "media", 16, submitter(settings))
    kills = 0
    for target in (4, 8):
        wait_until(lambda t=target: sum(c["charged"] for c in sim_calls(sim_control)) >= t,
                   60, what=f"{target} paid calls")
        children = wait_until(lambda: _pool_children(w1.proc.pid), 10, what="pool children")
        os.kill(children[0], signal.SIGKILL)
        kills += 1
    # Each child holds a lease of its own: the killed one's job is due again 10 s after.
    wait_final(url, batch.ids, 60)
    figures = check_outcomes(url, batch, sim_calls(sim_control))
    report("prefork child SIGKILL", kills=kills, **figures)
    assert figures["duplicate_paid"] <= kills


# --- 2. redis-server killed, restarted, flushed mid-batch ------------------------------------

@pytest.fixture
def aof_redis(tmp_path):
    """A redis-server of this test only, with appendonly yes, that the test may restart."""
    server = RedisServer(tmp_path / "redis-aof", appendonly=True).start()
    yield server
    server.stop()


def answered_within(url: str, ids: list[int], since: float, what: str) -> float:
    """Wait for every job to end; return how long after ``since`` the last one did."""
    wait_final(url, ids, RECOVERY_S + 30)
    with session_scope(url) as s:
        last = max(s.scalars(select(Job.finished_at).where(Job.id.in_(ids))))
    return last.replace(tzinfo=last.tzinfo or UTC).timestamp() - since


def test_redis_killed_and_restarted_from_its_aof_at_default_settings(
        aof_redis, configured, sim_control, start_worker, tmp_path):
    settings = configured
    url = settings.database_url
    sim_config(sim_control, latency={"fixed": 1.0})
    # The rate limit below what the threads could call: as in a backfill, some threads are
    # always between their Redis steps (claim, slot, breaker) when redis goes away.
    start_worker("w1", CONCURRENCY, REDIS_URL=aof_redis.url, FACEID_RATE_LIMIT="4")
    # Backfill jobs are only stored: the worker's feeder sends them to its Redis.
    batch = make_batch(sim_control, tmp_path / "media", 30, submitter(settings))
    wait_until(lambda: sum(c["charged"] for c in sim_calls(sim_control)) >= 6, 60,
               what="6 paid calls before the kill")
    # SIGKILL: whatever redis had not yet written to its AOF is lost.
    down_at = time.time()
    aof_redis.restart(hard=True, down_for=2.0)
    up_at = time.time()
    last_s = answered_within(url, batch.ids, up_at, "every job to end")

    calls = sim_calls(sim_control)
    figures = check_outcomes(url, batch, calls)
    report("redis SIGKILL + AOF restart at default settings", down_s=round(up_at - down_at, 1),
           in_flight_at_kill=in_flight(calls, down_at),
           last_answer_after_redis_back_s=round(last_s, 1), **figures)
    assert last_s <= RECOVERY_S
    # Answers that arrived while redis was down were still written (the database was up).
    assert figures["duplicate_paid"] == 0
    assert figures["answers_lost"] == 0
    assert "Redis unavailable" in worker_log(tmp_path) or "feeder round failed" in \
        worker_log(tmp_path), "redis going away was not noticed: the test proved little"


def test_redis_flushed_mid_batch_at_default_settings(configured, sim_control, start_worker,
                                                     tmp_path):
    """FLUSHALL (or a failover to an empty replica): every message, lease and the feeder's
    lock are gone at once. The database sends it all again; live workers' leases come back
    with their next heartbeat and none is judged dead meanwhile, so nothing is paid twice."""
    settings = configured
    url = settings.database_url
    sim_config(sim_control, latency={"fixed": 1.0})
    start_worker("w1", CONCURRENCY, FACEID_RATE_LIMIT="4")
    batch = make_batch(sim_control, tmp_path / "media", 30, submitter(settings))
    client = redis.Redis.from_url(settings.redis_url)
    wait_until(lambda: sum(c["charged"] for c in sim_calls(sim_control)) >= 6, 60,
               what="6 paid calls before the flush")
    out_before = lane_depths(client)["backfill"]
    flushed_at = time.time()
    client.flushall()
    last_s = answered_within(url, batch.ids, flushed_at, "every job to end")

    calls = sim_calls(sim_control)
    figures = check_outcomes(url, batch, calls)
    report("redis FLUSHALL at default settings", messages_lost=out_before,
           in_flight_at_flush=in_flight(calls, flushed_at),
           last_answer_after_flush_s=round(last_s, 1), **figures)
    assert out_before > 0, "no message was out: the test proved little"
    assert last_s <= RECOVERY_S
    assert figures["duplicate_paid"] == 0
    assert "whose message Redis no longer has" in worker_log(tmp_path)


# --- 3. the database unavailable after calls were made ------------------------------------

@contextmanager
def database_outage(url: str):
    """Make the database refuse work until the block ends.

    SQLite: another connection holds the write lock (BEGIN EXCLUSIVE); the workers' writes
    wait out their busy timeout (30 s, db.py) and then fail with "database is locked".
    PostgreSQL: the database stops accepting connections (ALLOW_CONNECTIONS false, which
    binds superusers too) and every open connection to it is terminated.
    """
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(parsed.database, timeout=30, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    name = parsed.database
    admin = create_engine(normalise_url(url.rsplit("/", 1)[0] + "/postgres"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = :name"), {"name": name})
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_database_outage_after_calls(configured, sim_control, start_worker, tmp_path):
    settings = configured
    url = settings.database_url
    sqlite_db = url.startswith("sqlite")
    sim_config(sim_control, latency={"fixed": 1.0})
    start_worker("w1", CONCURRENCY, **FAST)
    batch = make_batch(sim_control, tmp_path / "media", 20, submitter(settings))
    # The outage starts once every thread's first call has been answered and written, and
    # the threads have claimed their next jobs and are calling again (calls take 1 s): the
    # first writes to meet it are those calls' answers. Started in the middle of the first
    # answers, a thread's next claim could be first in line for the write lock, and every
    # write waits out the one before it (SQLite's busy timeout, 30 s) before its own.
    wait_until(lambda: sum(c["charged"] for c in sim_calls(sim_control)) >= CONCURRENCY, 60,
               interval=0.05, what="every thread's first call answered")
    time.sleep(0.3)
    client = redis.Redis.from_url(configured.redis_url)
    with database_outage(url):
        down_at = time.time()
        # The answers of the calls in flight arrive while the database is down: parked.
        # SQLite: a write that began in the outage fails only after its 30 s busy timeout.
        wait_until(lambda: parked_in_log(worker_log(tmp_path)), 40, interval=0.1,
                   what="an answer to be parked")
        time.sleep(max(0.0, down_at + (33 if sqlite_db else 3) - time.time()))
        calls_during = [c for c in sim_calls(sim_control) if c["t_start"] > down_at + 1.5]
        up_at = time.time()
    wait_final(url, batch.ids, 60)

    calls = sim_calls(sim_control)
    figures = check_outcomes(url, batch, calls)
    parked = parked_in_log(worker_log(tmp_path))
    report("database outage", backend=make_url(normalise_url(url)).get_backend_name(),
           down_s=round(up_at - down_at, 1), in_flight_at_outage=in_flight(calls, down_at),
           parked=len(parked), calls_started_during_outage=len(calls_during), **figures)
    # The parked answers were written as the jobs' outcomes: no second paid call for them.
    with session_scope(url) as s:
        stored = dict(s.execute(select(Result.job_id, Result.request_id)).all())
        failed = dict(s.execute(select(Job.id, Job.result_code).where(
            Job.state == "failed")).all())
    assert parked
    for job_id, (code, request_id) in parked.items():
        assert stored.get(job_id) == request_id or failed.get(job_id) == code == BAD, job_id
    assert figures["duplicate_paid"] == 0
    assert answers.parked_jobs(client) == []


# --- 4. 30 % transient answers ------------------------------------------------------------

def test_transient_answers_are_retried_within_max_attempts(configured, sim_control,
                                                           start_worker, tmp_path):
    settings = configured
    url = settings.database_url
    max_attempts = 10  # 0.3**10: no job of this batch runs out of attempts by bad luck
    sim_config(sim_control, latency={"fixed": 0.3}, error_rate=0.3, error_codes=TRANSIENT)
    start_worker("w1", CONCURRENCY, MAX_ATTEMPTS=str(max_attempts), **FAST)
    # One job is scripted to fail transiently forever: it must stop at MAX_ATTEMPTS.
    batch = make_batch(sim_control, tmp_path / "media", 30, submitter(settings),
                       plan_of=lambda i: "exhaust" if i == 0 else mixed_plan(i))
    wait_final(url, batch.ids, 90)

    calls = sim_calls(sim_control)
    figures = check_outcomes(url, batch, calls, max_attempts=max_attempts)
    report("30% transient", **figures)
    with session_scope(url) as s:
        attempts = s.scalars(select(Attempt).order_by(Attempt.id)).all()
    # Every call was recorded, each job's attempts are the transient ones then its answer.
    assert figures["answers_lost"] == 0
    for job_id in batch.ids:
        codes = [a.code for a in attempts if a.job_id == job_id]
        if batch.plan[job_id] == "exhaust":
            assert codes == ["InternalError"] * max_attempts
        else:
            assert all(c in TRANSIENT for c in codes[:-1]) and codes[-1] not in TRANSIENT
    retried = sum(1 for c in calls if c["code"] in TRANSIENT) - max_attempts
    assert retried > 0, "the simulator gave no transient answer: nothing was tested"


# --- 5. the account in arrears ------------------------------------------------------------

def test_arrears_stops_calls_and_keeps_jobs_queued(configured, sim_control, start_worker,
                                                   tmp_path):
    settings = configured
    url = settings.database_url
    probe_after = float(FAST["BREAKER_PROBE_AFTER"])
    arrears = "UnauthorizedOperation.Arrears"
    sim_config(sim_control, latency={"fixed": 0.3})
    start_worker("w1", CONCURRENCY, **FAST)
    batch = make_batch(sim_control, tmp_path / "media", 30, submitter(settings),
                       plan_of=lambda i: "pass")
    breaker = AccountBreaker(redis.Redis.from_url(configured.redis_url))
    wait_until(lambda: sum(c["charged"] for c in sim_calls(sim_control)) >= 6, 60,
               what="6 paid calls before the arrears")
    sim_config(sim_control, account_error=arrears)
    wait_until(lambda: breaker.state().open, 10, what="the breaker to open")
    time.sleep(4.5)
    during = breaker.state()
    held = states(url, batch.ids)
    sim_config(sim_control, account_error=None)
    cleared_at = time.time()
    wait_final(url, batch.ids, 60)

    calls = sim_calls(sim_control)
    refused = [c for c in calls if c["code"] == arrears]
    first = min(c["t_end"] for c in refused)
    burst = [c for c in calls if first < c["t_start"] <= first + 1.0]
    late = sorted(c["t_start"] for c in calls if first + 1.0 < c["t_start"] < cleared_at)
    stopped_after = max((c["t_start"] for c in burst), default=first) - first
    report("arrears", first_arrears_answer_to_last_call_s=round(stopped_after, 3),
           calls_in_first_second=len(burst), probe_calls_while_in_arrears=len(late),
           arrears_answers=len(refused), breaker_during=during.describe(),
           states_during=dict(held), **check_outcomes(url, batch, calls))
    # The breaker opened on the account error; while it was open no job failed or used up
    # an attempt, and the jobs not yet answered waited (queued, or momentarily running).
    assert during.open and during.code == arrears
    assert set(held) <= {"completed", "queued", "running"}, held
    assert held["completed"] < len(batch.ids)
    # Calls stopped within a second of the first Arrears answer: after that, only the
    # breaker's probes, one at a time, spaced by the probe delay (1 s, 2 s, 4 s ...).
    assert stopped_after < 1.0
    assert len(late) <= 3, late
    assert all(b - a >= 0.9 * probe_after for a, b in zip(late, late[1:], strict=False)), late
    # A probe closed the breaker once the account could pay again, and every job completed.
    assert not breaker.state().open
    with session_scope(url) as s:
        rows = s.execute(select(Attempt.code, Attempt.counted)).all()
    assert rows and all(not counted for code, counted in rows if code == arrears)
    assert all(counted for code, counted in rows if code != arrears)


def test_breaker_moves_only_on_the_probe(redis_server):
    """In-flight answers that come back after the breaker opened neither close it nor push
    the probe out; the probe holder may check again before it sends; a dead Redis does not
    turn a paid answer into an exception."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    breaker = AccountBreaker(client, probe_after=0.3)
    arrears = "UnauthorizedOperation.Arrears"

    def in_thread(fn):
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(fn).result()

    assert in_thread(breaker.before_call) == (True, 0.0)
    in_thread(lambda: breaker.record(arrears))
    opened = breaker.state()
    assert opened.open and opened.failures == 1
    # Two calls that were in flight: a success (it passed the account check before the
    # account failed) and the same account error again.
    in_thread(lambda: breaker.record(None))
    in_thread(lambda: breaker.record(arrears))
    assert breaker.state() == opened
    may, wait = in_thread(breaker.before_call)
    assert not may and 0 < wait <= 0.3
    time.sleep(0.35)

    def probe():
        first, second = breaker.before_call(), breaker.before_call()
        other = in_thread(breaker.before_call)  # another caller meanwhile
        breaker.record(arrears)
        return first, second, other

    first, second, other = in_thread(probe)
    assert first == second == (True, 0.0) and other[0] is False
    assert breaker.state().failures == 2  # the probe's answer re-opened it, longer
    time.sleep(0.65)

    def good_probe():
        assert breaker.before_call() == (True, 0.0)
        breaker.record(None)

    in_thread(good_probe)
    assert not breaker.state().open

    dead = AccountBreaker(redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0)))
    dead.record(None)
    dead.record(arrears)


# --- 6. the backstop sweep and the feeder's own process ----------------------------------

def insert_stranded(settings, media: Path, i: int, **columns) -> tuple[int, str]:
    """Insert a job row as a crash would have left it."""
    photo, video = write_pair(media, i)
    job_id, _ = insert_job(settings, validate_spec(
        JobSpec(f"stranded-{i}", str(photo), str(video), "SILENT")))
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**columns))
    return job_id, file_md5(video)


def test_sweep_writes_parked_answers_and_requeues_hung_jobs(configured, sim_control,
                                                            start_worker, tmp_path):
    settings = configured
    url = settings.database_url
    media = tmp_path / "media"
    long_ago = datetime.now(UTC) - timedelta(minutes=30)
    client = redis.Redis.from_url(settings.redis_url)
    # A worker whose lease is renewed but whose task hung long ago.
    alive = leases.WorkerLease(client, url, 10).start()
    hung, hung_md5 = insert_stranded(settings, media, 2, state="running", lease_id=alive.id,
                                     enqueued_at=None, updated_at=long_ago)

    def paid(request_id: str, sim: float) -> Answer:
        return Answer("Success", "result", http_status=200, request_id=request_id, sim=sim,
                      description="Success")

    # Answered and paid while the database was down; the job was given back, not yet due.
    parked, parked_md5 = insert_stranded(settings, media, 4, state="queued", enqueued_at=None)
    answers.park(client, parked, paid("parked-request-id", 88.5))
    # Taken out of the park by a task whose worker died (its lease is gone) before writing.
    taken, taken_md5 = insert_stranded(settings, media, 5, state="queued", enqueued_at=None)
    answers.park(client, taken, paid("taken-request-id", 91.0))
    assert answers.take(client, taken, "lease-of-a-dead-worker") is not None
    # Taken and written: its job has its outcome, the taken copy is only forgotten.
    done, _ = insert_stranded(settings, media, 6, state="completed", enqueued_at=None)
    answers.park(client, done, paid("done-request-id", 77.0))
    assert answers.take(client, done, alive.id) is not None
    # Parked for a job that ended meanwhile: dropped.
    ended, _ = insert_stranded(settings, media, 7, state="failed", enqueued_at=None)
    answers.park(client, ended, paid("ended-request-id", 60.0))

    counts = sweep_stuck_jobs(Resources(settings))
    assert counts == {"parked": 2, "stuck": 1, "stuck_ended": 0}, counts
    assert answers.taken(client) == {}
    assert sorted(answers.parked_jobs(client)) == sorted([parked, taken])
    alive.stop()

    start_worker("w1", CONCURRENCY)
    wait_final(url, [hung, parked, taken], 30)
    calls = sim_calls(sim_control)
    assert [c["video_md5"] for c in calls] == [hung_md5]
    with session_scope(url) as s:
        results = {r.job_id: r for r in s.scalars(select(Result))}
    # The parked answers became the outcomes without a call.
    assert (results[parked].request_id, results[parked].sim) == ("parked-request-id", 88.5)
    assert (results[taken].request_id, results[taken].sim) == ("taken-request-id", 91.0)
    assert not {parked_md5, taken_md5} & {c["video_md5"] for c in calls}
    assert answers.parked_jobs(client) == []


def test_a_parked_answer_taken_by_a_dead_worker_is_taken_over_by_the_next_run(configured):
    settings = configured
    client = redis.Redis.from_url(settings.redis_url)
    answer = Answer("Success", "result", http_status=200, request_id="rid-1", sim=80.0)
    first = leases.WorkerLease(client, settings.database_url, 10)
    first.beat()
    answers.park(client, 7, answer)
    assert answers.take(client, 7, first.id) == answer
    nxt = leases.WorkerLease(client, settings.database_url, 10)
    nxt.beat()
    assert answers.take(client, 7, nxt.id) is None  # its taker is alive: it is writing it
    client.delete(first.key)  # the taker's worker died before writing
    assert answers.take(client, 7, nxt.id) == answer
    assert answers.taken(client)[7][2] == nxt.id
    assert answers.take(client, 7, nxt.id) is None  # taken once per run


def test_beat_alone_feeds_due_jobs(configured, app_env, database_url, tmp_path):
    """beat runs a feeder candidate too: with no worker up, due jobs still reach Redis."""
    import subprocess
    import sys

    settings = configured
    ids = [submit(settings, JobSpec(f"beat-{i}", f"cos://{settings.cos_bucket}/{i}.jpg",
                                    f"cos://{settings.cos_bucket}/{i}.mp4", "SILENT",
                                    lane="backfill"))[0] for i in range(3)]
    client = redis.Redis.from_url(settings.redis_url)
    assert lane_depths(client)["backfill"] == 0
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "faceid_batch.worker", "beat",
         "--schedule", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"],
        env={**os.environ, **app_env, "DATABASE_URL": database_url},
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "beat.log", "ab"))
    try:
        wait_until(lambda: lane_depths(client)["backfill"] == 3, 30, what="beat's feeder to send")
    finally:
        beat.terminate()
        beat.wait(10)
    with session_scope(settings.database_url) as s:
        assert all(j.enqueued_at is not None and j.due_at is None
                   for j in s.scalars(select(Job).where(Job.id.in_(ids))))
