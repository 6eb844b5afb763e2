"""Biometric-data retention: delete the media and best frames of jobs past the period.

A job that ended (completed or failed) more than ``older_than_days`` ago loses its uploaded
media objects and its stored best frame; its row, its verdict and its attempts stay, and
``jobs.media_purged_at`` records when. Objects are content-addressed and shared: one is
deleted only when no job that keeps its media (not purged and not past the period) uses it.
Only objects under ``COS_KEY_PREFIX`` are ours to delete; a ``cos://`` source someone else
put in the bucket is left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from faceid_batch.db import session_scope
from faceid_batch.models import BestFrame, Job, JobState
from faceid_batch.settings import Settings
from faceid_batch.stage.storage import MediaStager
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)
CHUNK = 500


@dataclass
class PurgeReport:
    jobs: int = 0
    objects_deleted: int = 0
    objects_kept_shared: int = 0
    objects_not_ours: int = 0
    frames_cleared: int = 0
    errors: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"jobs={self.jobs} objects_deleted={self.objects_deleted} "
                f"objects_kept_shared={self.objects_kept_shared} "
                f"objects_not_ours={self.objects_not_ours} frames_cleared={self.frames_cleared}"
                + (f" errors={len(self.errors)}" if self.errors else ""))


def _due(cutoff: datetime):  # type: ignore[no-untyped-def]
    """Jobs whose media the purge removes: ended before the cutoff, not yet purged."""
    return (Job.state.in_([s.value for s in JobState.final()]) & (Job.finished_at < cutoff)
            & Job.media_purged_at.is_(None))


def _keys_still_used(session: Session, keys: set[str], cutoff: datetime) -> set[str]:
    """Of ``keys``, those a job that keeps its media still refers to."""
    if not keys:
        return set()
    ended = [s.value for s in JobState.final()]
    keeps = Job.media_purged_at.is_(None) & or_(
        Job.state.not_in(ended), Job.finished_at.is_(None), Job.finished_at >= cutoff)
    used: set[str] = set()
    for col in (Job.photo_key, Job.video_key):
        used.update(session.scalars(select(col).where(keeps, col.in_(keys))).all())
    return used


def purge_media(settings: Settings, older_than_days: float, stager=None,  # type: ignore[no-untyped-def]
                now: datetime | None = None, dry_run: bool = False) -> PurgeReport:
    """Purge the media of every job that ended more than ``older_than_days`` ago."""
    if older_than_days <= 0:
        raise ValueError("older_than_days must be positive")
    if stager is None and not dry_run:
        stager = MediaStager(settings)
    now = now or utcnow()
    cutoff = now - timedelta(days=older_than_days)
    report = PurgeReport()
    after_id = 0
    while True:
        with session_scope(settings.database_url) as session:
            rows = session.execute(
                select(Job.id, Job.photo_key, Job.video_key, BestFrame.object_key)
                .outerjoin(BestFrame, BestFrame.job_id == Job.id)
                .where(_due(cutoff), Job.id > after_id).order_by(Job.id).limit(CHUNK)
            ).all()
            if not rows:
                break
            after_id = rows[-1][0]
            keys = {k for r in rows for k in r[1:] if k}
            shared = _keys_still_used(session, keys, cutoff)
        ours = {k for k in keys - shared if k.startswith(settings.cos_key_prefix)}
        report.objects_kept_shared += len(keys & shared)
        report.objects_not_ours += len(keys - shared - ours)
        ids = [r[0] for r in rows]
        report.jobs += len(ids)
        if dry_run:
            report.objects_deleted += len(ours)
            continue
        failed = False
        for key in sorted(ours):
            try:
                stager.delete(key)
                report.objects_deleted += 1
            except Exception as exc:  # the next run tries again: these jobs stay unpurged
                failed = True
                report.errors.append(f"{key}: {type(exc).__name__}")
                log.warning("purge: could not delete an object (%s); the jobs stay unpurged",
                            type(exc).__name__)
        if failed:
            report.jobs -= len(ids)
            continue
        with session_scope(settings.database_url) as session:
            report.frames_cleared += session.execute(
                update(BestFrame).where(BestFrame.job_id.in_(ids),
                                        or_(BestFrame.content.is_not(None),
                                            BestFrame.object_key.is_not(None)))
                .values(content=None, object_key=None)
            ).rowcount or 0
            session.execute(update(Job).where(Job.id.in_(ids)).values(media_purged_at=now))
    log.info("purge of media older than %s days: %s", older_than_days, report.describe())
    return report

