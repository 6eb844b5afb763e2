"""Submit a job: validate everything that can be checked for free, insert the row, enqueue.

Order matters: the row is committed before the task is sent, so a worker never receives an
id it cannot load. A crash between the commit and the send leaves a ``queued`` row that the
recovery sweep re-enqueues.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from faceid_batch.db import session_scope
from faceid_batch.media import MediaError, inspect_local
from faceid_batch.models import Job, JobState, Lane, utcnow
from faceid_batch.settings import Settings

log = logging.getLogger(__name__)

LIVENESS_TYPES = ("LIP", "ACTION", "SILENT")
_LIP_CODE = re.compile(r"^\d{4}$")
_ACTION_SEQ = re.compile(r"^[12](,[12])*$")
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class SubmitError(ValueError):
    """The job cannot be accepted; the message names the field and the problem."""


@dataclass(frozen=True)
class JobSpec:
    """One verification request as a producer gives it."""

    idempotency_key: str
    photo: str
    video: str
    liveness_type: str
    validate_data: str | None = None
    lane: str = Lane.ONBOARDING.value
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None
    # Filled in by validate_spec for local files, so that staging need not hash them again.
    photo_md5: str | None = None
    video_md5: str | None = None


def validate_liveness(liveness_type: str, validate_data: str | None) -> str | None:
    """Check LivenessType and ValidateData against the API's rules; return the clean data."""
    if liveness_type not in LIVENESS_TYPES:
        raise SubmitError(
            f"liveness type {liveness_type!r}: must be one of {', '.join(LIVENESS_TYPES)}"
        )
    data = (validate_data or "").strip() or None
    if liveness_type == "LIP" and (data is None or not _LIP_CODE.match(data)):
        raise SubmitError(f"validate data {data!r}: LIP needs a 4-digit code such as 1234")
    if liveness_type == "ACTION" and (data is None or not _ACTION_SEQ.match(data)):
        raise SubmitError(
            f"validate data {data!r}: ACTION needs an action sequence such as 1,2 or 2,1"
        )
    if liveness_type == "SILENT" and data is not None:
        raise SubmitError(f"validate data {data!r}: SILENT takes no validate data")
    return data


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://", "cos://"))


def validate_spec(spec: JobSpec) -> JobSpec:
    """Every free check: key, lane, liveness rules, and local media (format, name, size)."""
    if not _KEY.match(spec.idempotency_key or ""):
        raise SubmitError(
            "idempotency key: 1-200 printable characters without spaces are required"
        )
    if spec.lane not in (Lane.ONBOARDING.value, Lane.BACKFILL.value):
        raise SubmitError(f"lane {spec.lane!r}: must be onboarding or backfill")
    data = validate_liveness(spec.liveness_type, spec.validate_data)
    md5s: dict[str, str | None] = {"photo": None, "video": None}
    for kind, source in (("photo", spec.photo), ("video", spec.video)):
        if not source:
            raise SubmitError(f"{kind}: a path, http(s) URL or cos://bucket/key is required")
        if "?" in source and is_remote(source):
            # A query string may carry a signature; we never keep one.
            raise SubmitError(f"{kind}: URLs with a query string are not accepted")
        if not is_remote(source):
            try:
                md5s[kind] = inspect_local(kind, source).md5
            except MediaError as exc:
                raise SubmitError(str(exc)) from None
    return JobSpec(**{**spec.__dict__, "validate_data": data,
                      "photo_md5": md5s["photo"], "video_md5": md5s["video"]})


def insert_job(settings: Settings, spec: JobSpec) -> tuple[int, bool]:
    """Insert the job row; return (job id, created). An existing key returns its job."""
    with session_scope(settings.database_url) as session:
        existing = session.scalar(
            select(Job.id).where(Job.idempotency_key == spec.idempotency_key)
        )
        if existing is not None:
            return existing, False
    try:
        with session_scope(settings.database_url) as session:
            job = Job(
                idempotency_key=spec.idempotency_key,
                lane=spec.lane,
                state=JobState.QUEUED.value,
                liveness_type=spec.liveness_type,
                validate_data=spec.validate_data,
                photo_source=spec.photo,
                video_source=spec.video,
                photo_md5=spec.photo_md5,
                video_md5=spec.video_md5,
                callback_url=spec.callback_url,
                meta=spec.metadata,
            )
            session.add(job)
            session.flush()
            return job.id, True
    except IntegrityError:
        # Another producer inserted the same key between our check and our insert.
        with session_scope(settings.database_url) as session:
            return session.scalar(
                select(Job.id).where(Job.idempotency_key == spec.idempotency_key)
            ), False


def enqueue(settings: Settings, job_id: int, lane: str) -> None:
    """Send the verify task for a committed job to its lane, then mark it sent."""
    from faceid_batch.tasks import verify

    verify.apply_async(args=[job_id], queue=lane)
    # If we die before this line the job keeps enqueued_at NULL and the sweep re-sends it.
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


def submit(settings: Settings, spec: JobSpec) -> tuple[int, bool]:
    """Validate, insert (idempotent on the key), then enqueue. Return (job id, created)."""
    spec = validate_spec(spec)
    job_id, created = insert_job(settings, spec)
    if created:
        enqueue(settings, job_id, spec.lane)
    return job_id, created
