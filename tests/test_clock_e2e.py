"""A clock we can trust, end to end: the simulator's clock (FaceID and COS alike) 400 s
ahead of, or behind, this host's; one worker process answers a small batch. At most one
AuthFailure.SignatureExpire per worker process, never counted as an attempt nor billed;
uploads and presigned COS URLs are accepted on COS's clock (no DownLoadError)."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import select

from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.models import Attempt, Job
from helpers import sim_calls, sim_config, wait_until, worker_log

EXPIRED = "AuthFailure.SignatureExpire"
JOBS = 10


def _ended(url: str, ids: list[int]) -> bool:
    with session_scope(url) as s:
        states = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
    return len(states) == len(ids) and all(st in ("completed", "failed") for st in states)


@pytest.mark.parametrize("skew", [400.0, -400.0])
def test_a_skewed_api_and_bucket_answer_every_job(configured, sim_control, start_worker,
                                                  simulator, tmp_path, skew):
    settings = configured
    sim_config(sim_control, clock_skew=skew)
    # The simulator now dates its answers on the skewed clock, and judges by it.
    answer = requests.get(f"{sim_control}/health", timeout=5)
    assert answer.ok and "Date" in answer.headers
    start_worker(concurrency=8)
    ids = [submit(settings, JobSpec(f"clock-{skew}-{i}", str(p), str(v), "SILENT"))[0]
           for i, (p, v) in enumerate(write_pair(tmp_path / "media", i) for i in range(JOBS))]
    wait_until(lambda: _ended(settings.database_url, ids), 90, what="jobs to end")

    with session_scope(settings.database_url) as s:
        jobs = s.scalars(select(Job).where(Job.id.in_(ids))).all()
        attempts = s.scalars(select(Attempt).where(Attempt.job_id.in_(ids))).all()
    assert sorted(j.state for j in jobs) == ["completed"] * JOBS
    assert all(j.attempts == 1 for j in jobs)  # the re-signed call is the one counted
    calls = sim_calls(sim_control)
    codes = [c["code"] for c in calls]
    # One worker process: its first call may be signed before it heard from the API.
    assert codes.count(EXPIRED) <= 1, codes
    assert codes.count("Success") == JOBS
    assert not [c for c in codes if c.startswith("FailedOperation.")], codes  # DownLoadError
    expired = [a for a in attempts if a.code == EXPIRED]
    assert len(expired) == codes.count(EXPIRED)
    assert all(not a.counted and not a.billable for a in expired)
    log = worker_log(tmp_path)
    assert log.count(f": {EXPIRED} (RequestId") <= 1
    # The worker learned both clocks; the COS store took every upload and presigned GET.
    assert "clock of" in log
    stats = requests.get(f"http://{simulator.cos_domain}/_cos/stats", timeout=5).json()
    assert stats["operations"].get("GetObject", 0) >= 2 * JOBS


def test_the_simulator_skews_its_answers_and_its_checks(sim_control, simulator):
    import time
    from email.utils import parsedate_to_datetime

    before = sim_config(sim_control)["clock_skew"]
    assert before == 0.0
    sim_config(sim_control, clock_skew=-400)
    for url in (f"{sim_control}/health", f"http://{simulator.cos_domain}/_cos/stats"):
        date = parsedate_to_datetime(requests.get(url, timeout=5).headers["Date"])
        assert abs(date.timestamp() - (time.time() - 400)) < 3, url
    with pytest.raises(requests.HTTPError):
        sim_config(sim_control, clock_skew=1e9)
    requests.post(f"{sim_control}/reset", timeout=5).raise_for_status()
    assert sim_config(sim_control)["clock_skew"] == 0.0
