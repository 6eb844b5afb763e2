"""Batches: dedupe and resume across runs, pause / resume / cancel / retry-failed, weights.

A backfill only stores rows (due); the feeder sends them. So the tests here read the
schedule in the database (``due``) and, where a worker runs, the simulator's call log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
import redis
from sqlalchemy import func, select, update

from faceid_batch.bulk import backfill, batches
from faceid_batch.bulk.backfill import run_backfill
from faceid_batch.call.faceid_client import Answer
from faceid_batch.db import session_scope
from faceid_batch.local.samples import write_pair
from faceid_batch.messages import lane_depths
from faceid_batch.models import Batch, Job
from faceid_batch.scheduling import answers
from faceid_batch.times import utcnow
from faceid_batch.worker import resources
from helpers import file_md5, sim_calls, wait_until


def write_manifest(path, media, keys, start=0) -> list:
    """A CSV manifest with one SILENT row per key; returns the videos in order."""
    videos = []
    lines = ["key,photo,video,liveness_type"]
    for i, key in enumerate(keys, start=start):
        photo, video = write_pair(media, i)
        videos.append(video)
        lines.append(f"{key},{photo},{video},SILENT")
    path.write_text("\n".join(lines) + "\n")
    return videos


def queued(settings, lane: str = "backfill") -> int:
    """Messages waiting in the lane's Redis lists."""
    return lane_depths(redis.Redis.from_url(settings.redis_url))[lane]


def due(url: str, batch_id: int | None = None) -> int:
    """Jobs due in the database schedule (of one batch, or all)."""
    with session_scope(url) as s:
        q = select(func.count()).select_from(Job).where(Job.due_at.is_not(None))
        if batch_id is not None:
            q = q.where(Job.batch_id == batch_id)
        return s.scalar(q)


def jobs_of(url: str, batch_id: int) -> list[Job]:
    with session_scope(url) as s:
        return list(s.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.id)))


def all_in(url: str, batch_id: int, *states: str) -> bool:
    jobs = jobs_of(url, batch_id)
    return bool(jobs) and all(j.state in states for j in jobs)


# -- dedupe and resume ------------------------------------------------------------------
def test_rerunning_a_manifest_enqueues_nothing_new(configured, tmp_path):
    settings = configured
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", [f"r-{i}" for i in range(12)])
    first = run_backfill(settings, manifest, chunk_size=5)
    assert (first.accepted, first.known, first.bad) == (12, 0, 0)
    # Stored due; nothing is sent to Redis by the backfill itself (the feeder sends).
    assert due(settings.database_url, first.batch_id) == 12 and queued(settings) == 0
    again = run_backfill(settings, manifest, chunk_size=5)
    assert again.resumed and again.batch_id == first.batch_id
    assert (again.accepted, again.known, again.bad) == (0, 12, 0)
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 12
    assert due(settings.database_url) == 12


def test_duplicates_across_chunks_are_bad_rows_but_an_edited_manifest_is_not(configured,
                                                                             tmp_path):
    settings = configured
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", ["d-1", "d-2", "d-3", "d-1", "d-4"])
    first = run_backfill(settings, manifest, chunk_size=2, report_path=tmp_path / "r.csv")
    assert (first.accepted, first.bad) == (4, 1)
    assert "5,d-1,duplicate key: already on row 2" in (tmp_path / "r.csv").read_text()
    # Rows added at the top move every line down: the known keys are not duplicates.
    write_manifest(manifest, tmp_path / "media", ["d-0", "d-1", "d-2", "d-3", "d-4"], start=5)
    again = run_backfill(settings, manifest, chunk_size=2, report_path=tmp_path / "r.csv")
    assert (again.accepted, again.known, again.bad) == (1, 4, 0)


def test_a_run_killed_midway_then_rerun_runs_each_key_exactly_once(
        configured, sim_control, start_worker, tmp_path, monkeypatch):
    settings = configured
    manifest = tmp_path / "m.csv"
    keys = [f"h-{i}" for i in range(20)]
    videos = write_manifest(manifest, tmp_path / "media", keys)
    real_insert = backfill.insert_jobs
    calls = {"n": 0}

    def dies_on_second_chunk(conn, rows):
        calls["n"] += bool(rows)  # (a chunk also inserts its refused rows: none here)
        if calls["n"] == 2:
            raise RuntimeError("producer killed mid-manifest")
        return real_insert(conn, rows)

    monkeypatch.setattr(backfill, "insert_jobs", dies_on_second_chunk)
    with pytest.raises(RuntimeError, match="producer killed"):
        run_backfill(settings, manifest, chunk_size=5)
    monkeypatch.setattr(backfill, "insert_jobs", real_insert)
    with session_scope(settings.database_url) as s:
        stored = s.scalar(select(func.count()).select_from(Job))
    assert stored == 5 and due(settings.database_url) == 5

    again = run_backfill(settings, manifest, chunk_size=5)
    assert (again.accepted, again.known, again.bad) == (15, 5, 0)
    assert due(settings.database_url) == 20

    start_worker()
    wait_until(lambda: all_in(settings.database_url, again.batch_id, "completed"), 90,
               what="all 20 jobs to complete")
    jobs = jobs_of(settings.database_url, again.batch_id)
    assert sorted(j.idempotency_key for j in jobs) == sorted(keys)
    # One paid call per key.
    sent_md5 = [c["video_md5"] for c in sim_calls(sim_control)]
    assert sorted(sent_md5) == sorted(file_md5(v) for v in videos)


# -- pause, resume, cancel ------------------------------------------------------------------
def test_pause_parks_queued_jobs_and_resume_runs_them(configured, sim_control, start_worker,
                                                      tmp_path):
    settings = configured
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", [f"p-{i}" for i in range(6)])
    result = run_backfill(settings, manifest)
    batches.pause(settings, result.batch_id)
    start_worker()
    wait_until(lambda: all_in(settings.database_url, result.batch_id, "paused"), 30,
               what="the worker to park the paused batch's jobs")
    assert queued(settings) == 0 and sim_calls(sim_control) == []
    assert batches.status(settings, result.batch_id).by_state == {"paused": 6}

    assert batches.resume(settings, result.batch_id) == 6
    wait_until(lambda: all_in(settings.database_url, result.batch_id, "completed"), 60,
               what="the resumed jobs to complete")
    assert len(sim_calls(sim_control)) == 6


def test_cancel_closes_jobs_not_yet_called_and_nothing_is_called(
        configured, sim_control, start_worker, tmp_path):
    settings = configured
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", [f"c-{i}" for i in range(4)])
    result = run_backfill(settings, manifest)
    assert batches.cancel(settings, result.batch_id) == 4
    start_worker()
    wait_until(lambda: queued(settings) == 0, 30, what="the worker to take the messages")
    wait_until(lambda: all_in(settings.database_url, result.batch_id, "failed"), 10,
               what="the jobs to stay failed")
    assert {j.result_code for j in jobs_of(settings.database_url, result.batch_id)} == {
        batches.CANCELLED_CODE}
    assert sim_calls(sim_control) == []
    with pytest.raises(batches.BatchError, match="cancelled"):
        batches.resume(settings, result.batch_id)
    with pytest.raises(batches.BatchError, match="cancelled"):
        batches.retry_failed(settings, result.batch_id)


def test_gate_parks_or_closes_jobs_and_survives_a_lost_redis_copy(configured, tmp_path):
    settings = configured
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", ["g-1", "g-2"])
    result = run_backfill(settings, manifest)
    res = resources()
    url = settings.database_url

    def out(key: str) -> int:
        """Make the job look as the feeder leaves it: its message out in Redis."""
        with session_scope(url) as s:
            job = s.scalars(select(Job).where(Job.idempotency_key == key)).one()
            job.state, job.due_at, job.enqueued_at = "queued", None, utcnow()
            return job.id

    def gate(key: str) -> tuple[str | None, str]:
        job_id = out(key)
        with session_scope(url) as s:
            verdict = batches.batch_gate(res, s, job_id, result.batch_id)
        with session_scope(url) as s:
            job = s.get(Job, job_id)
            return verdict, job.state

    assert gate("g-1") == (None, "queued")
    batches.pause(settings, result.batch_id)
    assert gate("g-1") == ("paused", "paused")
    with session_scope(url) as s:
        job = s.scalars(select(Job).where(Job.idempotency_key == "g-1")).one()
        assert job.enqueued_at is None and job.due_at is None
    # Redis restarted empty: the first check rebuilds the copy from the database.
    res.redis.delete(batches.CONTROL_KEY)
    assert gate("g-2") == ("paused", "paused")
    assert res.redis.hget(batches.CONTROL_KEY, str(result.batch_id)) == b"paused"
    # A paid answer waits in Redis for this job: it runs (to write it) even though paused.
    g2 = out("g-2")
    answers.park(res.redis, g2, Answer("Success", "result", http_status=200,
                                       request_id="parked-rid", sim=90.0))
    with session_scope(url) as s:
        assert batches.batch_gate(res, s, g2, result.batch_id) is None
    answers.take(res.redis, g2)
    answers.settle(res.redis, g2)
    batches.cancel(settings, result.batch_id)
    with session_scope(url) as s:
        s.execute(update(Job).values(state="queued", result_code=None))
    assert gate("g-1") == ("failed", "failed")
    with session_scope(url) as s:
        job = s.scalars(select(Job).where(Job.idempotency_key == "g-1")).one()
        assert job.result_code == batches.CANCELLED_CODE and job.finished_at is not None
        assert job.enqueued_at is None and job.due_at is None


def test_backfill_into_a_paused_batch_stores_rows_without_sending(configured, tmp_path):
    settings = configured
    url = settings.database_url
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", ["q-1", "q-2"])
    first = run_backfill(settings, manifest, name="nightly")
    assert batches.pause(settings, first.batch_id) == 2
    assert due(url, first.batch_id) == 0
    write_manifest(manifest, tmp_path / "media", ["q-1", "q-2", "q-3", "q-4"])
    again = run_backfill(settings, manifest, name="nightly")
    assert again.batch_id == first.batch_id
    assert (again.accepted, again.parked, again.known) == (2, 2, 2)
    assert all_in(url, first.batch_id, "paused") and due(url, first.batch_id) == 0
    assert batches.resume(settings, first.batch_id) == 4
    assert all_in(url, first.batch_id, "queued") and due(url, first.batch_id) == 4


def test_retry_failed_requeues_with_fresh_attempts(configured, tmp_path):
    settings = configured
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", ["f-1", "f-2", "f-3"])
    result = run_backfill(settings, manifest)
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.idempotency_key == "f-1").values(
            state="failed", attempts=6, result_code="FailedOperation.DownLoadTimeoutError",
            error_message="gave up after 6 attempts", finished_at=utcnow(), due_at=None))
        s.execute(update(Job).where(Job.idempotency_key == "f-2").values(
            state="failed", result_code=batches.CANCELLED_CODE, finished_at=utcnow(),
            due_at=None))
    before = due(settings.database_url)
    assert batches.retry_failed(settings, result.batch_id) == 1
    assert due(settings.database_url) == before + 1
    with session_scope(settings.database_url) as s:
        job = s.scalars(select(Job).where(Job.idempotency_key == "f-1")).one()
        other = s.scalars(select(Job).where(Job.idempotency_key == "f-2")).one()
    assert (job.state, job.attempts, job.result_code, job.finished_at) == ("queued", 0, None,
                                                                          None)
    assert job.due_at is not None and job.enqueued_at is None
    assert other.state == "failed"  # a cancelled job is not retried


def test_weight_is_set_by_backfill_and_by_the_command(configured, tmp_path, app_env,
                                                      database_url):
    settings = configured
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", ["w-1"])
    result = run_backfill(settings, manifest, weight=3)
    assert batches.status(settings, result.batch_id).weight == 3
    # A resumed batch keeps its weight unless one is given.
    assert batches.status(settings, run_backfill(settings, manifest).batch_id).weight == 3
    with pytest.raises(ValueError, match="weight"):
        run_backfill(settings, manifest, weight=0)
    with pytest.raises(batches.BatchError, match="weight"):
        batches.set_weight(settings, result.batch_id, -1)

    env = {**os.environ, **app_env, "DATABASE_URL": database_url}
    out = subprocess.run([sys.executable, "-m", "faceid_batch.cli", "batch", "weight",
                          str(result.batch_id), "0.5"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert batches.status(settings, result.batch_id).weight == 0.5
    assert "weight 0.5" in batches.format_status(batches.status(settings, result.batch_id))
    bad = subprocess.run([sys.executable, "-m", "faceid_batch.cli", "batch", "weight",
                          str(result.batch_id), "0"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "weight" in bad.stderr


def test_status_counts_rate_eta_and_the_commands(configured, tmp_path, app_env, database_url):
    settings = configured
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", [f"s-{i}" for i in range(5)])
    result = run_backfill(settings, manifest)
    now = utcnow()
    with session_scope(settings.database_url) as s:
        for key, values in {
            "s-0": dict(state="completed", passed=True),
            "s-1": dict(state="completed", passed=False),
            "s-2": dict(state="failed", result_code="InvalidParameter"),
        }.items():
            s.execute(update(Job).where(Job.idempotency_key == key).values(
                started_at=now - timedelta(seconds=20), finished_at=now, **values))
    st = batches.status(settings, result.batch_id)
    assert st.by_state == {"completed": 2, "failed": 1, "queued": 2}
    assert (st.passed, st.not_passed, st.failed_by_code) == (1, 1, {"InvalidParameter": 1})
    assert st.total == 5 and st.done == 3 and st.rate == pytest.approx(3 / 20, rel=0.2)
    assert st.eta_seconds == pytest.approx(2 / st.rate)

    env = {**os.environ, **app_env, "DATABASE_URL": database_url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "faceid_batch.cli", "batch", *args],
                              env=env, capture_output=True, text=True, timeout=60)

    out = cli("status", str(result.batch_id))
    assert out.returncode == 0, out.stderr
    assert "5 total, 3 done, 2 to go" in out.stdout and "InvalidParameter: 1" in out.stdout
    assert "ETA 0:00:" in out.stdout
    out = cli("pause", str(result.batch_id))
    assert out.returncode == 0 and "paused" in out.stdout
    with session_scope(settings.database_url) as s:
        assert s.get(Batch, result.batch_id).state == "paused"
    assert "ETA none (paused)" in cli("status", str(result.batch_id)).stdout
    missing = cli("cancel", "999999")
    assert missing.returncode == 2 and "no such batch" in missing.stderr
