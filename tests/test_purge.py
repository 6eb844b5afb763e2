"""Biometric-data retention: purge removes the media and best frames, keeps verdicts."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

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


def bucket_listing(settings) -> set[str]:
    """Every object under COS_KEY_PREFIX, read from the store itself."""
    client = MediaStager(settings).client
    resp = client.list_objects(Bucket=settings.cos_bucket, Prefix=settings.cos_key_prefix,
                               MaxKeys=1000)
    return {o["Key"] for o in resp.get("Contents", [])}


def test_no_object_outlives_the_purge_whatever_way_its_job_ended(
        configured, sim_control, start_worker, tmp_path, app_env, database_url):
    """Jobs that completed, failed after staging their photo, were refused by the worker's
    preflight after staging both files, or failed on media that is not what it says; and an
    upload that never became a job (a request that lost the race for its key): after the
    purge, the bucket holds none of their objects."""
    from test_untrusted import MediaServer

    from faceid_batch.local.samples import mp4_bytes
    from faceid_batch.models import MediaObject

    # A prefix of its own: the simulator's bucket holds the other tests' objects too.
    prefix = f"purge-{tmp_path.name[-12:]}/"
    settings = configured.model_copy(update={"cos_key_prefix": prefix})
    photos = [write_pair(tmp_path / "m", 700 + i)[0] for i in range(4)]
    _, good_video = write_pair(tmp_path / "m", 710)
    server = MediaServer("127.0.0.1", {
        "/short.mp4": mp4_bytes(711, 200_000, duration_s=1.0),  # SilentTooShort
        "/text.mp4": b"this is not a video at all" * 100})
    start_worker(SOURCE_FETCH_SECONDS="2", STAGE_MAX_ATTEMPTS="2", COS_KEY_PREFIX=prefix)
    ids = {
        "completed": submit(settings, JobSpec("p-ok", str(photos[0]), str(good_video),
                                              "SILENT"))[0],
        "failed": submit(settings, JobSpec("p-404", str(photos[1]),
                                           f"{server.url}/gone.mp4", "SILENT"))[0],
        "refused": submit(settings, JobSpec("p-short", str(photos[2]),
                                            f"{server.url}/short.mp4", "SILENT"))[0],
        "invalid": submit(settings, JobSpec("p-text", str(photos[3]),
                                            f"{server.url}/text.mp4", "SILENT"))[0],
    }

    def states() -> dict[str, str]:
        with session_scope(settings.database_url) as s:
            return {name: s.get(Job, job_id).state for name, job_id in ids.items()}

    wait_until(lambda: states() == {"completed": "completed", "failed": "failed",
                                    "refused": "refused", "invalid": "failed"}, 60,
               what="the jobs to end")
    # A producer API upload whose request stored no job: on the ledger, for no job.
    loser_photo, _ = write_pair(tmp_path / "loser", 720)
    MediaStager(settings).stage("photo", str(loser_photo), check_existing=False)
    server.close()

    listed = bucket_listing(settings)
    with session_scope(settings.database_url) as s:
        ledger = set(s.scalars(select(MediaObject.object_key)))
    assert listed and listed <= ledger  # every object in the bucket is on the ledger
    # Each way of ending left objects behind (the failed and refused jobs' photos at least).
    assert len(listed) >= 1 + 2 + 2 + 1 + 1

    with session_scope(settings.database_url) as s:
        s.execute(update(Job).values(finished_at=utcnow() - timedelta(days=40)))
        s.execute(update(MediaObject).values(written_at=utcnow() - timedelta(hours=2)))
    env = {**os.environ, **app_env, "DATABASE_URL": database_url, "COS_KEY_PREFIX": prefix}
    proc = purge_cli(env, "30")
    assert proc.returncode == 0, proc.stderr
    assert "jobs=4" in proc.stdout and "orphans=1" in proc.stdout, proc.stdout
    assert bucket_listing(settings) == set()
    with session_scope(settings.database_url) as s:
        assert all(j.media_purged_at is not None for j in s.scalars(select(Job)))
        assert s.scalar(select(MediaObject.id).where(MediaObject.deleted_at.is_(None))) is None


def erase_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceid_batch.cli", "purge", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_an_erasure_removes_one_jobs_face_data_and_is_audited(
        configured, sim_control, start_worker, tmp_path, app_env, database_url):
    from faceid_batch.models import AccessAudit

    settings = configured
    (p0, v0), (_, v1) = write_pair(tmp_path / "m", 730), write_pair(tmp_path / "m", 731)
    start_worker()
    gone = submit(settings, JobSpec("forget-me", str(p0), str(v0), "SILENT"))[0]
    stays = submit(settings, JobSpec("keep-me", str(p0), str(v1), "SILENT"))[0]
    wait_until(lambda: all(job.state == "completed" for job in (
        _job(settings, gone), _job(settings, stays))), 60, what="both jobs")
    before = _job(settings, gone)
    stager = MediaStager(settings)
    env = {**os.environ, **app_env, "DATABASE_URL": database_url}

    proc = erase_cli(env, "--key", "forget-me")
    assert proc.returncode == 0, proc.stderr
    # Its own video is gone; the photo another job still uses is kept, and said so.
    assert not stager.exists(before.video_key) and stager.exists(before.photo_key)
    assert f"kept {before.photo_key}: job(s) {stays} use the same file" in proc.stdout
    after = _job(settings, gone)
    assert after.erased_at is not None and after.media_purged_at is not None
    assert (after.photo_source, after.video_source) == ("(erased)", "(erased)")
    assert (after.photo_md5, after.video_md5, after.photo_key, after.video_key) == (
        None, None, None, None)
    assert after.state == "completed" and after.passed is True  # the verdict stays
    assert after.preflight is None and after.error_message is None
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(BestFrame.id).where(BestFrame.job_id == gone)) is None
        assert s.scalar(select(Result.sim).where(Result.job_id == gone)) is None
        assert s.scalar(select(Result.result).where(Result.job_id == gone)) == "Success"
        audit = s.scalars(select(AccessAudit).where(AccessAudit.job_id == gone)).all()
    assert [(a.what, a.surface) for a in audit] == [("erasure", "cli")]
    assert audit[0].actor.startswith("cli:")
    # The other job is untouched; erasing it too removes the shared photo.
    assert _job(settings, stays).photo_md5 is not None
    assert erase_cli(env, "--job", str(stays)).returncode == 0
    assert not stager.exists(before.photo_key)
    # Wrong uses are told apart.
    unknown = erase_cli(env, "--key", "no-such-key")
    assert unknown.returncode == 1 and "no job with key" in unknown.stderr
    both = erase_cli(env, "--key", "x", "--older-than", "3")
    assert both.returncode == 2 and "exactly one" in both.stderr


def _job(settings, job_id: int) -> Job:
    with session_scope(settings.database_url) as s:
        return s.get(Job, job_id)


def test_a_job_run_again_after_its_purge_is_purged_again(configured, sim_control, tmp_path):
    """A refused key submitted again, or a failed job retried, after its purge: its new
    objects are on the ledger, and the next purge takes them."""
    from faceid_batch.models import MediaObject
    from faceid_batch.scheduling import schedule

    settings = configured.model_copy(update={"cos_key_prefix": f"again-{tmp_path.name[-8:]}/"})
    photo, video = write_pair(tmp_path / "m", 740)
    job_id = submit(settings, JobSpec("again", str(photo), str(video), "SILENT"))[0]
    stager = MediaStager(settings)
    first = stager.stage("photo", str(photo), check_existing=False, job_id=job_id)
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            state="failed", finished_at=utcnow() - timedelta(days=40), due_at=None,
            enqueued_at=None))
    from faceid_batch.admin.purge import purge_media

    assert purge_media(settings, 30).jobs == 1 and not stager.exists(first.key)
    # Run again: the restart clears the purge mark; its new object goes on the ledger.
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            **schedule.restarted_columns(paused=False)))
        assert s.get(Job, job_id).media_purged_at is None
    _, video2 = write_pair(tmp_path / "m2", 741)
    second = stager.stage("video", str(video2), check_existing=False, job_id=job_id)
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            state="failed", finished_at=utcnow() - timedelta(days=40), due_at=None))
    report = purge_media(settings, 30)
    assert report.jobs == 1 and not stager.exists(second.key), report.describe()
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(MediaObject.id).where(MediaObject.deleted_at.is_(None))) is None
