"""Biometric-data retention and erasure: no face image outlives the purge.

The retention purge (``purge_media``): a job that ended (completed, failed or refused) more
than ``older_than_days`` ago loses every object the product wrote to COS for it, and its
stored best frame; its row, its verdict and its attempts stay, and ``jobs.media_purged_at``
records when. The objects are found on the ledger (``media_objects``, stage/ledger.py), not
in the job's columns, so a job that failed after staging its photo, or a request that lost
the race for its idempotency key, leaves nothing behind: objects written for no job are
purged once ORPHAN_GRACE old.

An erasure (``erase``, a right-to-be-forgotten request): one job's objects, best frame (its
row, MD5 and size too) and biometric columns (sources, MD5s, object keys, Sim) go at once,
whatever its age; its row, verdict and audit stay, and the erasure is itself an audit row.

Objects are content-addressed and shared: one is deleted only when no job that keeps its
media (and no recent upload still waiting for its job) uses it. Only objects under
``COS_KEY_PREFIX`` are ours to delete; a ``cos://`` source someone else put in the bucket is
left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, func, or_, select, update
from sqlalchemy.orm import Session

from faceid_batch.admin import audit
from faceid_batch.db import affected, session_scope
from faceid_batch.models import (
    DEFAULT_TENANT_ID,
    BestFrame,
    Job,
    JobState,
    MediaObject,
    Result,
)
from faceid_batch.settings import Settings
from faceid_batch.stage.ledger import ORPHAN_GRACE
from faceid_batch.stage.storage import EveryBucket, MediaStager
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)
CHUNK = 500
ENDED = JobState.final()
ERASED = "(erased)"


class PurgeError(ValueError):
    """The erasure cannot be done as asked; the message says why."""


@dataclass
class PurgeReport:
    jobs: int = 0
    objects_deleted: int = 0
    objects_kept_shared: int = 0
    objects_not_ours: int = 0
    frames_cleared: int = 0
    orphans: int = 0
    errors: list[str] = field(default_factory=list)
    # An erasure: the jobs that still use an object this one used (key -> job ids).
    shared_with: dict[str, list[int]] = field(default_factory=dict)

    def describe(self) -> str:
        return (f"jobs={self.jobs} objects_deleted={self.objects_deleted} "
                f"objects_kept_shared={self.objects_kept_shared} "
                f"objects_not_ours={self.objects_not_ours} frames_cleared={self.frames_cleared}"
                f" orphans={self.orphans}"
                + (f" errors={len(self.errors)}" if self.errors else ""))


def _keeps(cutoff: datetime | None, but: Iterable[int] = ()) -> ColumnElement[bool]:
    """Jobs that keep their media: not purged, not erased, and (with ``cutoff``) not ended
    before it; never the jobs in ``but`` (the ones being purged)."""
    cond: ColumnElement[bool] = Job.media_purged_at.is_(None)
    if cutoff is not None:
        cond = cond & or_(Job.state.not_in(ENDED), Job.finished_at.is_(None),
                          Job.finished_at >= cutoff)
    but = list(but)
    return cond & Job.id.not_in(but) if but else cond


def _users(session: Session, settings: Settings, keys: set[str], keeps: ColumnElement[bool],
           now: datetime) -> dict[str, set[int | None]]:
    """Of ``keys``, those something still uses: a job that keeps its media (by the ledger,
    by the keys it was called with, or as its own ``cos://`` source), or an upload that is
    still waiting for its job. Maps each to those jobs (None: a waiting upload)."""
    used: dict[str, set[int | None]] = {}
    if not keys:
        return used
    listed = list(keys)
    for key, job_id in session.execute(
            select(MediaObject.object_key, MediaObject.job_id).join(Job)
            .where(MediaObject.object_key.in_(listed), MediaObject.deleted_at.is_(None), keeps)):
        used.setdefault(key, set()).add(job_id)
    for key in session.scalars(select(MediaObject.object_key).where(
            MediaObject.object_key.in_(listed), MediaObject.job_id.is_(None),
            MediaObject.deleted_at.is_(None), MediaObject.written_at >= now - ORPHAN_GRACE)):
        used.setdefault(key, set()).add(None)
    sources = {f"cos://{settings.cos_bucket}/{k}": k for k in listed}
    for col in (Job.photo_key, Job.video_key, Job.photo_source, Job.video_source):
        values = listed if col in (Job.photo_key, Job.video_key) else list(sources)
        for job_id, value in session.execute(select(Job.id, col).where(keeps,
                                                                       col.in_(values))):
            if value is not None:
                used.setdefault(sources.get(value, value), set()).add(job_id)
    return used


def _keys_of(session: Session, settings: Settings, ids: list[int]) -> set[str]:
    """Every object key these jobs used: the ledger, the keys they were called with, their
    best frames' objects, and their ``cos://`` sources in our bucket."""
    keys = set(session.scalars(select(MediaObject.object_key).where(
        MediaObject.job_id.in_(ids), MediaObject.deleted_at.is_(None))))
    prefix = f"cos://{settings.cos_bucket}/"
    for row in session.execute(select(Job.photo_key, Job.video_key, Job.photo_source,
                                      Job.video_source).where(Job.id.in_(ids))):
        keys.update(k for k in row[:2] if k)
        keys.update(src[len(prefix):] for src in row[2:] if src and src.startswith(prefix))
    keys.update(k for k in session.scalars(select(BestFrame.object_key).where(
        BestFrame.job_id.in_(ids))) if k)
    return keys


def _every_bucket(settings: Settings, stager: Any) -> Any:
    """What deletes an object: with buckets in several regions (COS_BUCKETS), every one of
    them (the ledger's keys are content addresses a job of any region may have staged)."""
    if len(settings.buckets) > 1:
        return EveryBucket(settings, stager if isinstance(stager, MediaStager) else None)
    return stager or MediaStager(settings)


def _delete(stager: Any, keys: Iterable[str], report: PurgeReport) -> bool:
    """Delete ``keys`` from the bucket; False if any could not be (the caller keeps its
    rows as they are, and the next run tries again)."""
    ok = True
    for key in sorted(keys):
        try:
            stager.delete(key)
            report.objects_deleted += 1
        except Exception as exc:  # noqa: BLE001 - the next run tries again
            ok = False
            report.errors.append(f"{key}: {type(exc).__name__}")
            log.warning("purge: could not delete an object (%s); it is tried again on the "
                        "next run", type(exc).__name__)
    return ok


def _ours(settings: Settings, keys: set[str]) -> set[str]:
    return {k for k in keys if k.startswith(settings.cos_key_prefix)}


def purge_media(settings: Settings, older_than_days: float, stager: Any = None,
                now: datetime | None = None, dry_run: bool = False) -> PurgeReport:
    """Purge the media of every job that ended more than ``older_than_days`` ago, and the
    objects written for no job more than ORPHAN_GRACE ago."""
    if older_than_days <= 0:
        raise ValueError("older_than_days must be positive")
    if not dry_run:
        stager = _every_bucket(settings, stager)
    now = now or utcnow()
    cutoff = now - timedelta(days=older_than_days)
    report = PurgeReport()
    # Not purged yet, or purged and then run again with new objects on the ledger.
    due = (Job.state.in_(ENDED) & (Job.finished_at < cutoff) & or_(
        Job.media_purged_at.is_(None),
        Job.id.in_(select(MediaObject.job_id).where(MediaObject.deleted_at.is_(None)))))
    after_id = 0
    while True:
        with session_scope(settings.database_url) as session:
            ids = list(session.scalars(select(Job.id).where(due, Job.id > after_id)
                                       .order_by(Job.id).limit(CHUNK)))
            if not ids:
                break
            after_id = ids[-1]
            keys = _keys_of(session, settings, ids)
            shared = set(_users(session, settings, keys, _keeps(cutoff, ids), now))
        ours = _ours(settings, keys - shared)
        report.objects_kept_shared += len(keys & shared)
        report.objects_not_ours += len(keys - shared - ours)
        report.jobs += len(ids)
        if dry_run:
            report.objects_deleted += len(ours)
            with session_scope(settings.database_url) as session:
                report.frames_cleared += _frames_held(session, ids)
            continue
        if not _delete(stager, ours, report):
            report.jobs -= len(ids)  # they stay unpurged: the next run tries again
            continue
        with session_scope(settings.database_url) as session:
            report.frames_cleared += _clear_frames(session, ids)
            session.execute(update(MediaObject).where(
                MediaObject.job_id.in_(ids), MediaObject.deleted_at.is_(None))
                .values(deleted_at=now))
            session.execute(update(Job).where(Job.id.in_(ids)).values(media_purged_at=now))
    _purge_orphans(settings, stager, now, report, dry_run)
    log.info("purge of media older than %s days: %s", older_than_days, report.describe())
    return report


def _purge_orphans(settings: Settings, stager: Any, now: datetime, report: PurgeReport,
                   dry_run: bool) -> None:
    """Objects written for no job (a request that failed, or lost the race for its key,
    or whose job was deleted) once ORPHAN_GRACE old."""
    old = and_(MediaObject.job_id.is_(None), MediaObject.deleted_at.is_(None),
               MediaObject.written_at < now - ORPHAN_GRACE)
    after_id = 0
    while True:
        with session_scope(settings.database_url) as session:
            rows = session.execute(select(MediaObject.id, MediaObject.object_key)
                                   .where(old, MediaObject.id > after_id)
                                   .order_by(MediaObject.id).limit(CHUNK)).all()
            if not rows:
                return
            after_id = rows[-1][0]
            keys = {key for _, key in rows}
            shared = set(_users(session, settings, keys, _keeps(None), now))
        ours = _ours(settings, keys - shared)
        report.orphans += len(rows)
        report.objects_kept_shared += len(keys & shared)
        if dry_run:
            report.objects_deleted += len(ours)
            continue
        if _delete(stager, ours, report):
            with session_scope(settings.database_url) as session:
                session.execute(update(MediaObject).where(
                    MediaObject.id.in_([row_id for row_id, _ in rows])).values(deleted_at=now))


_HELD = or_(BestFrame.content.is_not(None), BestFrame.object_key.is_not(None))


def _frames_held(session: Session, ids: list[int]) -> int:
    """How many of these jobs still hold a best frame (what a purge would clear)."""
    return session.scalar(select(func.count()).select_from(BestFrame).where(
        BestFrame.job_id.in_(ids), _HELD)) or 0


def _clear_frames(session: Session, ids: list[int]) -> int:
    return affected(session.execute(update(BestFrame).where(BestFrame.job_id.in_(ids), _HELD)
                           .values(content=None, object_key=None))) or 0


def find_job(settings: Settings, job_id: int | None = None, key: str | None = None,
             tenant_id: int = DEFAULT_TENANT_ID) -> int:
    """The id of the job an erasure names, by id, or by idempotency key within ``tenant_id``
    (keys are unique per tenant)."""
    with session_scope(settings.database_url) as session:
        where = (Job.id == job_id if job_id is not None
                 else and_(Job.tenant_id == tenant_id, Job.idempotency_key == key))
        found = session.execute(select(Job.id, Job.state).where(where)).first()
    if found is None:
        raise PurgeError(f"no job {job_id}" if job_id is not None else f"no job with key {key!r}")
    if found.state not in ENDED:
        raise PurgeError(f"job {found.id} is {found.state}: an erasure waits until it has "
                         "ended (cancel its batch, or wait for its answer)")
    return int(found.id)


def erase(settings: Settings, job_id: int, actor: str, stager: Any = None,
          now: datetime | None = None) -> PurgeReport:
    """Erase one ended job's face data now: its objects (unless another job that keeps its
    media uses the same object: ``shared_with`` names them), its best frame, and the
    columns that identify the media; audited as ``actor``."""
    stager = _every_bucket(settings, stager)
    now = now or utcnow()
    report = PurgeReport(jobs=1)
    with session_scope(settings.database_url) as session:
        keys = _keys_of(session, settings, [job_id])
        users = _users(session, settings, keys, _keeps(None, [job_id]), now)
    ours = _ours(settings, keys - set(users))
    report.objects_kept_shared = len(keys & set(users))
    report.objects_not_ours = len(keys - set(users) - ours)
    report.shared_with = {k: sorted(j for j in users[k] if j is not None) for k in users}
    if not _delete(stager, ours, report):
        raise PurgeError(f"job {job_id}: {len(report.errors)} object(s) could not be deleted "
                         f"({', '.join(report.errors)}); nothing was cleared, try again")
    with session_scope(settings.database_url) as session:
        # The whole frame row goes: even its MD5 and size are of a face image.
        report.frames_cleared = affected(session.execute(
            delete(BestFrame).where(BestFrame.job_id == job_id))) or 0
        session.execute(update(MediaObject).where(
            MediaObject.job_id == job_id, MediaObject.deleted_at.is_(None))
            .values(deleted_at=now))
        session.execute(update(Result).where(Result.job_id == job_id).values(sim=None))
        # The error and the preflight findings name the sources too.
        session.execute(update(Job).where(Job.id == job_id).values(
            photo_source=ERASED, video_source=ERASED, photo_md5=None, video_md5=None,
            error_message=case((Job.error_message.is_(None), None), else_=ERASED),
            preflight=None, sim=None,
            photo_key=None, video_key=None, erased_at=now,
            media_purged_at=func.coalesce(Job.media_purged_at, now)))
    audit.record(settings.database_url, actor=actor, surface="cli", what="erasure",
                 job_id=job_id, detail=report.describe()[:2000])
    log.info("erasure of job %s: %s", job_id, report.describe())
    return report
