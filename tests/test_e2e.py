"""One whole verification on real parts: redis-server, a Celery worker process, the simulator.

Sign, upload, call, classify, persist — checked from the database and from the simulator's
own call log.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import requests
from sqlalchemy import func, select

from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import mp4_bytes, png_bytes, write_pair
from faceid_batch.models import Attempt, BestFrame, Job, Result
from helpers import wait_until


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def calls(control_url: str) -> list[dict]:
    return requests.get(f"{control_url}/calls", timeout=5).json()


def script(control_url: str, video, responses) -> None:
    requests.post(f"{control_url}/script", json={"video_md5": md5(video), "responses": responses},
                  timeout=5).raise_for_status()


def finished(url: str, ids: list[int]) -> bool:
    with session_scope(url) as s:
        states = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
    return len(states) == len(ids) and all(st in ("completed", "failed") for st in states)


def test_jobs_end_to_end(configured, sim_control, start_worker, tmp_path):
    settings = configured
    pairs = [write_pair(tmp_path / "media", i) for i in range(4)]
    script(sim_control, pairs[1][1], ["FailedOperation.DownLoadTimeoutError"])
    script(sim_control, pairs[2][1], ["FailedOperation.LivessDetectFake"])
    script(sim_control, pairs[3][1], [{"code": "Success", "sim": 40.0}])
    start_worker()
    ids = [submit(settings, JobSpec(f"e2e-{i}", str(p), str(v), "SILENT"))[0]
           for i, (p, v) in enumerate(pairs)]
    wait_until(lambda: finished(settings.database_url, ids), 60, what="jobs to finish")

    with session_scope(settings.database_url) as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        results = {r.job_id: r for r in s.scalars(select(Result))}
        attempts = s.scalars(select(Attempt).order_by(Attempt.id)).all()
        frames = {f.job_id: f for f in s.scalars(select(BestFrame))}

    ok, transient, fake, low = (jobs[i] for i in ids)
    assert ok.state == "completed" and ok.passed is True and results[ok.id].sim >= 70
    assert transient.state == "completed" and transient.attempts == 2 and transient.passed
    assert [a.code for a in attempts if a.job_id == transient.id] == [
        "FailedOperation.DownLoadTimeoutError", "Success"]
    assert fake.state == "completed" and fake.passed is False
    assert results[fake.id].result == "FailedOperation.LivessDetectFake"
    assert low.passed is False and results[low.id].sim == 40.0
    # Every API attempt is recorded with the simulator's RequestId.
    sim_calls = calls(sim_control)
    assert len(sim_calls) == 5 == len(attempts)
    assert {c["request_id"] for c in sim_calls} == {a.request_id for a in attempts}
    # The best frame was downloaded and kept with a matching MD5.
    for job in (ok, transient):
        frame = frames[job.id]
        assert hashlib.md5(frame.content).hexdigest() == frame.md5 and frame.size > 0
    assert fake.id not in frames
    # Media were staged content-addressed; the MD5s sent match the files.
    assert {c["video_md5"] for c in sim_calls} == {md5(v) for _, v in pairs}
    assert ok.video_key.endswith(f"{md5(pairs[0][1])}.mp4")


def test_same_key_twice_is_one_job_and_one_call(configured, sim_control, start_worker, tmp_path):
    settings = configured
    photo, video = write_pair(tmp_path / "m", 7)
    first, created1 = submit(settings, JobSpec("dup-key", str(photo), str(video), "SILENT"))
    second, created2 = submit(settings, JobSpec("dup-key", str(photo), str(video), "SILENT"))
    assert first == second and created1 and not created2
    start_worker()
    wait_until(lambda: finished(settings.database_url, [first]), 60, what="job")
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 1
    assert len(calls(sim_control)) == 1


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceid_batch.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_bad_input_gives_clear_errors_and_no_call(configured, sim_control, tmp_path, app_env,
                                                  database_url):
    import os

    env = {**os.environ, **app_env, "DATABASE_URL": database_url}
    photo, video = write_pair(tmp_path / "m", 8)
    renamed = tmp_path / "renamed.mp4"
    renamed.write_bytes(png_bytes(1, 3000))
    big = tmp_path / "big.mp4"
    big.write_bytes(mp4_bytes(2, 9 * 1024 * 1024))
    base = ["submit", "--photo", str(photo), "--key", "bad-1"]
    cases = [
        ([*base, "--video", str(tmp_path / "missing.mp4")], {}, "file not found"),
        ([*base, "--video", str(renamed)], {}, "content is a PNG file"),
        ([*base, "--video", str(big)], {}, "8 MB limit"),
        ([*base, "--video", str(video), "-t", "BLINK"], {}, "must be one of LIP, ACTION, SILENT"),
        ([*base, "--video", str(video)], {"FACEID_REGION": "eu-west-1"}, "FACEID_REGION"),
        ([*base, "--video", str(video)], {"FACEID_SECRET_KEY": ""}, "FACEID_SECRET_KEY"),
    ]
    for args, extra, expected in cases:
        proc = _cli({**env, **extra}, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert expected in proc.stderr, (expected, proc.stderr)
        assert "Traceback" not in proc.stderr
    with session_scope(database_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    assert calls(sim_control) == []
    # Media the API would refuse (and charge for): stored refused, exit 3, still no call.
    short = tmp_path / "short.mp4"
    short.write_bytes(mp4_bytes(3, 60_000, duration_s=1.0))
    proc = _cli(env, *base, "--video", str(short))
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "refused by preflight" in proc.stdout
    assert "FailedOperation.SilentTooShort" in proc.stdout
    assert calls(sim_control) == []
