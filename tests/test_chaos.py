"""Nothing lost, nothing paid twice (issue 4): break a real part in the middle of a batch.

Each test drives real Celery worker processes (threads pool) on a real redis-server, a real
database and the FaceID simulator, breaks one part while calls are in flight — a worker
SIGKILLed, redis-server restarted, the database unavailable, the API failing or refusing
the account — and checks from the database and from the simulator's own call log that every
job ended with its stored outcome and that no paid call was repeated beyond the honest bound.

The figures each test measured are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import ast
import json
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

from faceid_batch import answers
from faceid_batch.breaker import AccountBreaker
from faceid_batch.db import normalise_url, session_scope
from faceid_batch.faceid_client import Answer
from faceid_batch.local_services import RedisServer, free_port
from faceid_batch.models import Attempt, Job, Result
from faceid_batch.recovery import jobs_in_broker, sweep_stuck_jobs
from faceid_batch.samples import write_pair
from faceid_batch.submit import JobSpec, insert_job, submit, validate_spec
from faceid_batch.tasks import verify
from faceid_batch.worker import Resources, celery_app
from faceid_sim.liveness import default_sim
from helpers import file_md5, sim_calls, sim_config, sim_script, wait_until, worker_log

pytestmark = pytest.mark.e2e

CONCURRENCY = 8
# Short timeouts so that what a dead part left behind comes back within seconds:
# a killed worker's messages after the visibility timeout, a probe after one second.
FAST = {
    "BROKER_VISIBILITY_TIMEOUT": "8",
    "FACEID_READ_TIMEOUT": "5",
    "BREAKER_PROBE_AFTER": "1",
    "STUCK_AFTER_SECONDS": "10",
    "SWEEP_INTERVAL_SECONDS": "2",
}
FAKE = "FailedOperation.LivessDetectFake"
BAD = "InvalidParameterValue"
TRANSIENT = ["FailedOperation.DownLoadTimeoutError", "InternalError",
             "FailedOperation.LipNetFailed"]


def beat_args(tmp_path: Path) -> tuple[str, ...]:
    """Run beat inside the worker (the recovery sweep), its schedule file in tmp_path."""
    return ("-B", "-s", str(tmp_path / "beat-schedule"))


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


def sweep_resent(log: str) -> dict[str, int]:
    """What the recovery sweep re-sent, by reason, from a worker's log."""
    total: Counter = Counter()
    for counts in re.findall(r"recovery sweep re-sent jobs: (\{[^}]*\})", log):
        total.update(ast.literal_eval(counts))
    return dict(total)


def in_flight(calls: list[dict], at: float) -> int:
    return sum(1 for c in calls if c["t_start"] < at < c["t_end"])


# --- 1. a worker SIGKILLed mid-batch -------------------------------------------------------

def test_worker_sigkilled_mid_batch(configured, sim_control, start_worker, tmp_path):
    settings = configured
    url = settings.database_url
    sim_config(sim_control, latency={"fixed": 1.0})
    w1 = start_worker("w1", CONCURRENCY, **FAST)
    batch = make_batch(sim_control, tmp_path / "media", 40, submitter(settings))
    wait_until(lambda: sum(c["charged"] for c in sim_calls(sim_control)) >= 10, 60,
               what="10 paid calls before the kill")
    killed_at = time.time()
    w1.kill()
    kills = 1
    # With beat, as deployed: the recovery sweep re-sends a message the kill lost outright
    # (popped by the dead worker's BRPOP, not yet recorded as unacknowledged).
    start_worker("w2", CONCURRENCY, extra_args=beat_args(tmp_path), **FAST)
    # The killed worker's messages come back after the visibility timeout (8 s) at the next
    # restore pass of the new worker (kombu: every 10 s); about 12 s here.
    wait_final(url, batch.ids, 40)

    calls = sim_calls(sim_control)
    figures = check_outcomes(url, batch, calls)
    report("worker SIGKILL", kills=kills, concurrency=CONCURRENCY,
           in_flight_at_kill=in_flight(calls, killed_at), **figures)
    # A threads-pool worker loses every answer in flight when it is killed, and only those.
    assert figures["duplicate_paid"] <= kills * CONCURRENCY
    assert figures["answers_lost"] <= kills * CONCURRENCY


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
    wait_final(url, batch.ids, 60)
    figures = check_outcomes(url, batch, sim_calls(sim_control))
    report("prefork child SIGKILL", kills=kills, **figures)
    assert figures["duplicate_paid"] <= kills


# --- 2. redis-server restarted mid-batch ---------------------------------------------------

@pytest.fixture
def aof_redis(tmp_path):
    """A redis-server of this test only, with appendonly yes, that the test may restart."""
    server = RedisServer(tmp_path / "redis-aof", appendonly=True).start()
    yield server
    server.stop()


def sender_via(settings, broker_url: str):
    """Submit like ``submit`` does, but send the task to ``broker_url``'s Redis."""
    def send(spec: JobSpec) -> int:
        job_id, _ = insert_job(settings, validate_spec(spec))
        with celery_app.connection_for_write(broker_url) as conn:
            verify.apply_async(args=[job_id], queue=spec.lane, connection=conn)
        with session_scope(settings.database_url) as s:
            s.execute(update(Job).where(Job.id == job_id).values(enqueued_at=datetime.now(UTC)))
        return job_id
    return send


def test_redis_restarted_mid_batch(aof_redis, configured, sim_control, start_worker, tmp_path):
    settings = configured
    url = settings.database_url
    sim_config(sim_control, latency={"fixed": 1.0})
    # The rate limit below what the threads could call: as in a backfill, some threads are
    # always between their Redis steps (lock, slot, breaker) when redis goes away.
    start_worker("w1", CONCURRENCY, extra_args=beat_args(tmp_path),
                 REDIS_URL=aof_redis.url, FACEID_RATE_LIMIT="4", **FAST)
    batch = make_batch(sim_control, tmp_path / "media", 30, sender_via(settings, aof_redis.url))
    wait_until(lambda: sum(c["charged"] for c in sim_calls(sim_control)) >= 6, 60,
               what="6 paid calls before the restart")
    # SIGKILL: whatever redis had not yet written to its AOF is lost.
    down_at = time.time()
    aof_redis.restart(hard=True, down_for=2.0)
    up_at = time.time()
    # Jobs whose task died on the lost connection are re-sent by the sweep (STUCK_AFTER 10 s);
    # about 15 s here.
    wait_final(url, batch.ids, 45)

    calls = sim_calls(sim_control)
    figures = check_outcomes(url, batch, calls)
    report("redis restart", down_s=round(up_at - down_at, 1),
           in_flight_at_restart=in_flight(calls, down_at),
           sweep_resent=sweep_resent(worker_log(tmp_path, "w1")), **figures)
    # Answers that arrived while redis was down were still written (the database was up).
    assert figures["duplicate_paid"] == 0
    assert figures["answers_lost"] == 0


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
    wait_until(lambda: sum(c["charged"] for c in sim_calls(sim_control)) >= 4, 60,
               what="4 paid calls before the outage")
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


# --- 6. the recovery sweep ----------------------------------------------------------------

SWEEP_LOCK = "faceid:sweep:lock"


def insert_stranded(settings, media: Path, i: int, **columns) -> tuple[int, str]:
    """Insert a job row as a crash would have left it (no message in Redis)."""
    photo, video = write_pair(media, i)
    job_id, _ = insert_job(settings, validate_spec(
        JobSpec(f"stranded-{i}", str(photo), str(video), "SILENT")))
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**columns))
    return job_id, file_md5(video)


def test_sweep_resends_stranded_jobs(configured, sim_control, start_worker, tmp_path):
    settings = configured
    url = settings.database_url
    media = tmp_path / "media"
    long_ago = datetime.now(UTC) - timedelta(minutes=30)
    # Crash between the commit and the send: queued, never enqueued.
    unsent, unsent_md5 = insert_stranded(settings, media, 0, enqueued_at=None,
                                         created_at=long_ago)
    # Just submitted: its producer may still be sending it; not the sweep's business yet.
    fresh, _ = insert_stranded(settings, media, 1, enqueued_at=None)
    # Its worker died mid-call long ago.
    stuck, stuck_md5 = insert_stranded(settings, media, 2, state="running",
                                       enqueued_at=long_ago, updated_at=long_ago)
    # Its retry message was lost with a Redis restart.
    overdue, overdue_md5 = insert_stranded(settings, media, 3, state="retrying", attempts=1,
                                           enqueued_at=long_ago, next_attempt_at=long_ago)
    # Answered and paid while the database was down: the answer waits in Redis.
    parked, parked_md5 = insert_stranded(settings, media, 4, state="running",
                                         enqueued_at=datetime.now(UTC))
    client = redis.Redis.from_url(settings.redis_url)

    def paid(request_id: str, sim: float) -> Answer:
        return Answer("Success", "result", http_status=200, request_id=request_id, sim=sim,
                      description="Success")

    answers.park(client, parked, paid("parked-request-id", 88.5))
    # Taken out of the park by a task that died before writing it.
    taken, taken_md5 = insert_stranded(settings, media, 5, state="running",
                                       enqueued_at=datetime.now(UTC))
    answers.park(client, taken, paid("taken-request-id", 91.0))
    assert answers.take(client, taken) is not None
    # Taken and written: its job has its outcome, the taken copy is only forgotten.
    done, _ = insert_stranded(settings, media, 6, state="completed")
    answers.park(client, done, paid("done-request-id", 77.0))
    assert answers.take(client, done) is not None
    time.sleep(1.1)
    res = Resources(settings.model_copy(update={"stuck_after_seconds": 1,
                                                "broker_visibility_timeout": 8}))
    assert sweep_stuck_jobs(res) == {"parked": 2, "unsent": 1, "overdue": 1, "stuck": 1,
                                     "before_redis_start": 0, "lost": 0}
    assert answers.taken(client) == {}

    start_worker("w1", CONCURRENCY, **FAST)
    wait_final(url, [unsent, stuck, overdue, parked, taken], 30)
    calls = sim_calls(sim_control)
    assert sorted(c["video_md5"] for c in calls) == sorted([unsent_md5, stuck_md5, overdue_md5])
    with session_scope(url) as s:
        results = {r.job_id: r for r in s.scalars(select(Result))}
        fresh_job = s.get(Job, fresh)
    assert {unsent, stuck, overdue, parked, taken} == set(results)
    # The parked answers became the outcomes without a call.
    assert (results[parked].request_id, results[parked].sim) == ("parked-request-id", 88.5)
    assert (results[taken].request_id, results[taken].sim) == ("taken-request-id", 91.0)
    assert not {parked_md5, taken_md5} & {c["video_md5"] for c in calls}
    assert answers.parked_jobs(client) == []
    assert fresh_job.state == "queued" and fresh_job.enqueued_at is None


def test_sweep_resends_a_job_whose_message_was_lost(configured, sim_control, start_worker,
                                                    tmp_path):
    """A message popped by a worker killed before it recorded it is in no queue: send again.

    kombu's Redis transport takes a message with BRPOP and only then writes it to the
    "unacked" hash; a SIGKILL between the two loses it (CI once saw a job stay queued after
    the SIGKILL test). Here the loss is made exact: one message is popped and dropped, one is
    moved to "unacked" as a dead worker leaves it, one stays queued.
    """
    settings = configured
    url = settings.database_url
    client = redis.Redis.from_url(settings.redis_url)
    # Sent after this Redis started, as the sweep sees it (its uptime counts whole seconds).
    wait_until(lambda: client.info("server")["uptime_in_seconds"] >= 2, 5, what="Redis uptime")
    ids, md5s = [], {}
    for i in range(3):
        photo, video = write_pair(tmp_path / "media", i)
        job_id, _ = submit(settings, JobSpec(f"lost-{i}", str(photo), str(video), "SILENT",
                                             lane="backfill"))
        ids.append(job_id)
        md5s[job_id] = file_md5(video)
    lost_raw = client.rpop("backfill")           # the first submitted: taken, then gone
    taken_raw = client.rpop("backfill")          # the second: a dead worker's unacked one
    client.hset("unacked", "tag-of-a-dead-worker", json.dumps([json.loads(taken_raw),
                                                               "", "backfill"]))
    assert jobs_in_broker(client, ["onboarding", "backfill"]) == {ids[1], ids[2]}
    assert jobs_in_broker(client, ["onboarding", "backfill"], scan_limit=1) is None
    assert lost_raw is not None

    res = Resources(settings.model_copy(update={"stuck_after_seconds": 2,
                                                "sweep_interval_seconds": 1}))
    # Within STUCK_AFTER_SECONDS of its send a missing message may be in transit: left alone.
    assert sum(sweep_stuck_jobs(res).values()) == 0
    time.sleep(2.5)
    client.delete(SWEEP_LOCK)  # held for at least 5 s by the sweep above
    counts = sweep_stuck_jobs(res)
    assert counts["lost"] == 1 and sum(counts.values()) == 1, counts
    assert ids[0] in jobs_in_broker(client, ["onboarding", "backfill"])
    client.delete(SWEEP_LOCK)
    assert sum(sweep_stuck_jobs(res).values()) == 0  # re-sent now: in the queue again

    client.delete("unacked")  # kombu would restore it after the visibility timeout
    client.lpush("backfill", taken_raw)
    start_worker("w1", CONCURRENCY, **FAST)
    wait_final(url, ids, 30)
    assert sorted(c["video_md5"] for c in sim_calls(sim_control)) == sorted(md5s.values())


def test_sweep_runs_on_beat(configured, sim_control, start_worker, tmp_path):
    """A worker started with -B sweeps every SWEEP_INTERVAL_SECONDS on its own."""
    settings = configured
    job_id, md5 = insert_stranded(settings, tmp_path / "media", 0, enqueued_at=None,
                                  created_at=datetime.now(UTC) - timedelta(minutes=30))
    start_worker("w1", CONCURRENCY, extra_args=beat_args(tmp_path),
                 **{**FAST, "SWEEP_INTERVAL_SECONDS": "1"})
    wait_final(settings.database_url, [job_id], 30)
    assert [c["video_md5"] for c in sim_calls(sim_control)] == [md5]
    assert "recovery sweep re-sent jobs: {'parked': 0, 'unsent': 1" in worker_log(tmp_path)


def test_sweep_resends_jobs_sent_before_redis_started(configured, tmp_path):
    """A message sent to a Redis that has since restarted may be gone: send it again, once."""
    settings = configured
    uptime = redis.Redis.from_url(settings.redis_url).info("server")["uptime_in_seconds"]
    before = datetime.now(UTC) - timedelta(seconds=uptime + 60)
    lost, _ = insert_stranded(settings, tmp_path / "media", 0, enqueued_at=before,
                              created_at=before)
    recent, _ = insert_stranded(settings, tmp_path / "media", 1,
                                enqueued_at=datetime.now(UTC))
    res = Resources(settings.model_copy(update={"sweep_interval_seconds": 1}))
    counts = sweep_stuck_jobs(res)
    assert counts["before_redis_start"] == 1 and sum(counts.values()) == 1
    redis.Redis.from_url(settings.redis_url).delete(SWEEP_LOCK)
    # Re-sent now, so the next sweep leaves it alone.
    assert sum(sweep_stuck_jobs(res).values()) == 0
    with session_scope(settings.database_url) as s:
        assert s.get(Job, lost).enqueued_at is not None and recent
