"""Biometric-data retention: purge removes the media and best frames, keeps verdicts."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.messages import make_celery
from faceid_batch.models import BestFrame, Job, Result
from faceid_batch.settings import load_settings
from faceid_batch.stage.storage import MediaStager
from faceid_batch.times import utcnow
from helpers import wait_until

pytestmark = pytest.mark.e2e


def purge_cli(env: dict, days: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceid_batch.cli", "purge", "--older-than",
                           days], env=env, capture_output=True, text=True, timeout=60)


def test_purge_deletes_old_media_and_keeps_rows(configured, sim_control, start_worker,
                                                tmp_path, app_env, database_url):
    settings = configured
    (p0, v0), (_, v1) = write_pair(tmp_path / "m", 80), write_pair(tmp_path / "m", 81)
    start_worker()
    # Two jobs share the ID photo (one object, content-addressed); each has its own video.
    old = submit(settings, JobSpec("old", str(p0), str(v0), "SILENT"))[0]
    new = submit(settings, JobSpec("new", str(p0), str(v1), "SILENT"))[0]

    def jobs() -> dict[int, Job]:
        with session_scope(settings.database_url) as s:
            return {j.id: j for j in s.scalars(select(Job))}

    wait_until(lambda: all(j.state == "completed" for j in jobs().values()), 60, what="jobs")
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == old)
                  .values(finished_at=utcnow() - timedelta(days=40)))
    before = jobs()
    stager = MediaStager(settings)
    photo_key, old_video, new_video = (before[old].photo_key, before[old].video_key,
                                       before[new].video_key)
    assert photo_key == before[new].photo_key
    assert all(stager.exists(k) for k in (photo_key, old_video, new_video))

    env = {**os.environ, **app_env, "DATABASE_URL": database_url}
    proc = purge_cli(env, "30")
    assert proc.returncode == 0, proc.stderr
    assert "jobs=1 objects_deleted=1 objects_kept_shared=1" in proc.stdout, proc.stdout
    # The old job's own video is gone; the photo a recent job still uses stays.
    assert not stager.exists(old_video)
    assert stager.exists(photo_key) and stager.exists(new_video)
    after = jobs()
    assert after[old].media_purged_at is not None and after[new].media_purged_at is None
    with session_scope(settings.database_url) as s:
        frames = {f.job_id: f for f in s.scalars(select(BestFrame))}
        verdicts = {r.job_id: r for r in s.scalars(select(Result))}
    assert frames[old].content is None and frames[old].md5  # the frame's record, not the face
    assert frames[new].content
    assert verdicts[old].result == "Success" and after[old].passed is True
    assert after[old].state == "completed"

    # Once the recent job is past the period too, the shared photo goes; a re-run is a no-op.
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == new)
                  .values(finished_at=utcnow() - timedelta(days=31)))
    assert purge_cli(env, "30").returncode == 0
    assert not stager.exists(photo_key) and not stager.exists(new_video)
    assert "jobs=0 objects_deleted=0" in purge_cli(env, "30").stdout
    assert len(jobs()) == 2


def test_purge_is_scheduled_on_beat_when_configured(app_env):
    assert "media-purge" not in make_celery(load_settings(**{
        k.lower(): v for k, v in app_env.items()})).conf.beat_schedule
    conf = make_celery(load_settings(purge_after_days=30, purge_interval_seconds=600)).conf
    entry = conf.beat_schedule["media-purge"]
    assert (entry["task"], entry["args"], entry["schedule"]) == ("faceid_batch.purge", [30], 600)
    from faceid_batch.tasks import celery_app  # tasks registers them on the app

    assert "faceid_batch.purge" in celery_app.tasks


def test_beat_runs_the_purge(configured, sim_control, start_worker, tmp_path):
    """With PURGE_AFTER_DAYS set, beat (here inside the worker) purges on its own."""
    settings = configured
    photo, video = write_pair(tmp_path / "m", 90)
    # A retention of ~1 s, checked every second.
    start_worker(extra_args=("-B", "-s", str(tmp_path / "beat-schedule")),
                 PURGE_AFTER_DAYS="0.00001", PURGE_INTERVAL_SECONDS="1")
    job_id = submit(settings, JobSpec("beat-purge", str(photo), str(video), "SILENT"))[0]

    def purged() -> Job | None:
        with session_scope(settings.database_url) as s:
            job = s.get(Job, job_id)
            return job if job.media_purged_at is not None else None

    job = wait_until(purged, 30, what="beat to purge the job's media")
    stager = MediaStager(settings)
    assert job.state == "completed" and job.passed is True
    assert not stager.exists(job.video_key) and not stager.exists(job.photo_key)
