"""The lifecycle guarded end to end: writes checked against the writer's lease, a paid
answer always recorded, pause/resume without a window, callbacks that a dead worker cannot
strand."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

from pydantic import SecretStr
from sqlalchemy import func, select, update
from test_batches import jobs_of, write_manifest

from faceid_batch.admin import cost
from faceid_batch.bulk import batches
from faceid_batch.bulk.backfill import run_backfill
from faceid_batch.call.faceid_client import Answer
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.models import Attempt, Job, WebhookDelivery, WebhookMessage
from faceid_batch.outcome import record
from faceid_batch.scheduling import schedule
from faceid_batch.times import utcnow
from faceid_batch.worker import Resources
from helpers import sim_calls, wait_until

SECRET = "whsec_dGVzdC1GQUtFLXdlYmhvb2stc2VjcmV0LW5vdC1yZWFs"


def as_worker(settings, lease: str) -> Resources:
    """Resources of a worker process whose lease is ``lease`` (no heartbeat needed)."""
    res = Resources(settings)
    res.__dict__["lease"] = SimpleNamespace(id=lease)
    return res


def paid(request_id: str) -> Answer:
    return Answer("Success", "result", 200, request_id, sim=88.0)


def new_job(settings, tmp_path, key: str) -> int:
    photo, video = write_pair(tmp_path / "m", abs(hash(key)) % 1000)
    return submit(settings, JobSpec(key, str(photo), str(video), "SILENT"))[0]


def claim(url: str, job_id: int, lease: str) -> bool:
    with session_scope(url) as s:
        return schedule.claim(s, job_id, lease)


def rows(url: str, job_id: int) -> tuple[Job, list[Attempt]]:
    with session_scope(url) as s:
        return s.get(Job, job_id), list(s.scalars(
            select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)))


# -- writes name the lease ---------------------------------------------------------------
def test_a_worker_whose_job_was_taken_over_writes_nothing_but_its_paid_call(
        configured, tmp_path):
    settings = configured
    url = settings.database_url
    job_id = new_job(settings, tmp_path, "taken-over")
    assert claim(url, job_id, "lease-a")
    with session_scope(url) as s:  # lease-a was judged gone; lease-b took the job
        assert schedule.requeue_lease(s, "lease-a") == [job_id]
    assert claim(url, job_id, "lease-b")
    # lease-a's call comes back: it may not write the job, and its call is on record.
    assert record.record_answer(as_worker(settings, "lease-a"), job_id,
                                paid("late-rid")) == schedule.LOST
    job, attempts = rows(url, job_id)
    assert (job.state, job.lease_id, job.attempts, job.passed) == ("running", "lease-b", 0,
                                                                   None)
    assert [(a.request_id, a.counted, a.billable) for a in attempts] == [
        ("late-rid", False, True)]
    # Staging writes are guarded the same way.
    with session_scope(url) as s:
        assert not schedule.fail(s, job_id, "lease-a", "Local.MediaInvalid", "x")
        assert not schedule.write(s, job_id, "lease-a", {"preflight": []})
    # lease-b's own answer completes the job; the cost report counts both calls.
    assert record.record_answer(as_worker(settings, "lease-b"), job_id,
                                paid("own-rid")) == "completed"
    job, attempts = rows(url, job_id)
    assert (job.state, job.attempts, len(attempts)) == ("completed", 1, 2)
    assert cost.cost_report(settings).billable == 2


def test_a_job_made_due_again_and_not_taken_keeps_its_answer(configured, tmp_path):
    """The lease was judged gone but no one claimed the job since: its worker's answer is
    written, so the job is not called a second time."""
    settings = configured
    url = settings.database_url
    job_id = new_job(settings, tmp_path, "slow-lease")
    assert claim(url, job_id, "lease-a")
    with session_scope(url) as s:
        schedule.requeue_lease(s, "lease-a")
    assert record.record_answer(as_worker(settings, "lease-a"), job_id,
                                paid("kept-rid")) == "completed"
    job, attempts = rows(url, job_id)
    assert job.state == "completed" and job.due_at is None and len(attempts) == 1
    assert not claim(url, job_id, "lease-b")  # a late message finds it final


# -- pause and resume --------------------------------------------------------------------
def test_a_park_that_comes_after_a_resume_leaves_the_job_to_run(configured, tmp_path):
    settings = configured
    url = settings.database_url
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", ["race-1", "race-2"])
    result = run_backfill(settings, manifest)
    res = Resources(settings)
    batches.pause(settings, result.batch_id)
    batches.resume(settings, result.batch_id)
    # A worker that read "paused" before the resume reached Redis parks too late: the
    # database says active, so nothing is parked and the job runs.
    res.redis.hset(batches.CONTROL_KEY, str(result.batch_id), "paused")
    job_id = jobs_of(url, result.batch_id)[0].id
    with session_scope(url) as s:
        assert batches.batch_gate(res, s, job_id, result.batch_id) is None
    assert jobs_of(url, result.batch_id)[0].state == "queued"
    # The stale copy in Redis was put right.
    assert res.redis.hget(batches.CONTROL_KEY, str(result.batch_id)) is None
    res.stop()


def test_pause_and_resume_hammered_strand_nothing_and_pay_nothing_twice(
        configured, sim_control, start_worker, tmp_path):
    settings = configured
    url = settings.database_url
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", [f"h-{i}" for i in range(60)])
    result = run_backfill(settings, manifest)
    start_worker("w1", concurrency=8)
    start_worker("w2", concurrency=8)
    rng = random.Random(7)
    for _ in range(25):
        batches.pause(settings, result.batch_id)
        time.sleep(rng.uniform(0.02, 0.3))
        batches.resume(settings, result.batch_id)
        time.sleep(rng.uniform(0.02, 0.3))
    wait_until(lambda: all(j.state == "completed" for j in jobs_of(url, result.batch_id)),
               120, what="every job of the batch to be answered")
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(Job)
                        .where(Job.state == "paused")) == 0
    calls = sim_calls(sim_control)
    # One paid call per job, none twice (a throttled call, refused by the gateway, is not
    # paid: the limiter's own tests hold it to its budget).
    paid = Counter(c["video_md5"] for c in calls if c["charged"])
    assert len(paid) == 60 and set(paid.values()) == {1}, \
        [(c["code"], c["video_md5"]) for c in calls if not c["charged"]]


# -- callbacks are due rows --------------------------------------------------------------
class FlakyReceiver:
    """Answers 503 until ``up`` is set, then 200; records each request."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.ok: list[str] = []
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                if outer.up.is_set():
                    outer.ok.append(self.headers["webhook-id"])
                    self.send_response(200)
                else:
                    outer.refused += 1
                    self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_callbacks_survive_a_receiver_outage_and_a_killed_worker(
        configured, sim_control, start_worker, tmp_path, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    settings = configured.model_copy(update={"webhook_secret": SecretStr(SECRET)})
    url = settings.database_url
    receiver = FlakyReceiver()
    env = dict(WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_SCHEDULE="1s 1s 2s 2s 3s 3s 3s 3s 3s 3s")
    doomed = start_worker("w1", concurrency=8, **env)
    ids = []
    for i in range(12):
        photo, video = write_pair(tmp_path / "m", 500 + i)
        ids.append(submit(settings, JobSpec(f"cb-{i}", str(photo), str(video), "SILENT",
                                            callback_url=receiver.url))[0])
    wait_until(lambda: receiver.refused >= 12, 60, what="every callback to fail once")
    doomed.kill()  # SIGKILL, with callbacks claimed or due
    start_worker("w2", concurrency=8, **env)
    time.sleep(2)
    receiver.up.set()
    back = time.monotonic()
    wait_until(lambda: len(set(receiver.ok)) == 12, 60, what="every callback delivered")
    assert time.monotonic() - back < 45
    with session_scope(url) as s:
        states = s.execute(select(WebhookMessage.state, func.count())
                           .group_by(WebhookMessage.state)).all()
        assert dict(states) == {"delivered": 12}
        # Every attempt is on record, and each job's callback was delivered once it could be.
        delivered = s.scalars(select(WebhookDelivery.job_id)
                              .where(WebhookDelivery.status_code == 200)).all()
    assert sorted(delivered) == sorted(ids)
    assert len(sim_calls(sim_control)) == 12
    receiver.httpd.shutdown()


def test_old_callback_messages_become_due_rows(configured, tmp_path):
    """A callback message of the earlier kind (a job id, no claim) in Redis at the upgrade."""
    from faceid_batch.outcome import notify

    settings = configured.model_copy(update={"webhook_secret": SecretStr(SECRET)})
    job_id = new_job(settings.model_copy(update={}), tmp_path, "legacy")
    with session_scope(settings.database_url) as s:
        s.get(Job, job_id).callback_url = "http://127.0.0.1:9/hook"
    res = as_worker(settings, "lease-x")
    notify.queue_again(res, job_id)
    notify.queue_again(res, job_id)  # a second copy of the old message adds nothing
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(WebhookMessage)) == 1


def test_a_job_that_hangs_every_worker_ends(configured, tmp_path):
    """The stuck-job sweep counts each hang as a try at staging: a job that hangs every
    worker it meets ends failed once its tries are used up, with its callback queued."""
    settings = configured.model_copy(update={"webhook_secret": SecretStr(SECRET)})
    url = settings.database_url
    photo, video = write_pair(tmp_path / "m", 41)
    job_id = submit(settings, JobSpec("hangs-always", str(photo), str(video), "SILENT",
                                      callback_url="http://127.0.0.1:9/hook"))[0]
    long_ago = utcnow() - timedelta(hours=1)
    for n in range(1, settings.stage_max_attempts + 1):
        assert claim(url, job_id, f"lease-{n}")
        with session_scope(url) as s:
            s.execute(update(Job).where(Job.id == job_id).values(updated_at=long_ago))
            again, ended = schedule.requeue_stuck(s, utcnow() - timedelta(minutes=15),
                                                  settings.stage_max_attempts)
        last = n == settings.stage_max_attempts
        assert (again, ended) == (([], [job_id]) if last else ([job_id], []))
    job, _ = rows(url, job_id)
    assert (job.state, job.result_code, job.due_at) == ("failed", schedule.STUCK_CODE, None)
