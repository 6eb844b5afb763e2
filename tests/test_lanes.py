"""Two lanes on one budget: with both queued, onboarding jobs reach the API first."""

from __future__ import annotations

import hashlib

import requests
from sqlalchemy import select

from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.models import Job
from helpers import wait_until


def test_onboarding_jobs_reach_the_api_before_queued_backfill(configured, sim_control,
                                                               start_worker, tmp_path):
    settings = configured
    md5_lane = {}
    ids = []
    # The backfill is queued first, then the onboarding jobs, all before any worker runs.
    for lane, count, offset in (("backfill", 12, 0), ("onboarding", 3, 100)):
        for i in range(count):
            photo, video = write_pair(tmp_path / "m", offset + i)
            md5_lane[hashlib.md5(video.read_bytes()).hexdigest()] = lane
            ids.append(submit(settings, JobSpec(f"{lane}-{i}", str(photo), str(video),
                                                "SILENT", lane=lane))[0])
    requests.post(f"{sim_control}/config", json={"latency": {"fixed": 0.2}},
                  timeout=5).raise_for_status()
    start_worker(concurrency=1)

    def all_done():
        with session_scope(settings.database_url) as s:
            states = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
        return all(st == "completed" for st in states)

    wait_until(all_done, 90, what="both lanes to finish")
    calls = requests.get(f"{sim_control}/calls", timeout=5).json()
    order = [md5_lane[c["video_md5"]] for c in sorted(calls, key=lambda c: c["t_start"])]
    assert order[:3] == ["onboarding"] * 3, order
    assert order.count("backfill") == 12
