"""A verification as the producer API shows it: status apart from outcome.

``status`` is where the job stands (queued, running, retrying, completed, failed, refused,
paused); ``outcome`` is set once it is final: ``passed``, ``code`` (FaceID's Result, or our
own ``Local.*`` code), ``sim``, ``description``, ``request_id``, ``attempts``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from faceid_batch.models import DEFAULT_TENANT_ID, Job, JobState, Result
from faceid_batch.times import as_aware

FINAL = JobState.final()

def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return as_aware(value).isoformat().replace("+00:00", "Z")


def show(job: Job, result: Result | None) -> dict[str, Any]:
    """The JSON of one verification."""
    outcome = None
    if job.state in FINAL:
        outcome = {
            "passed": job.passed,
            "code": job.result_code,
            "sim": result.sim if result else None,
            "description": (result.description if result else None) or job.error_message,
            "request_id": result.request_id if result else None,
            "attempts": job.attempts,
        }
    return {
        "id": job.id, "key": job.idempotency_key, "status": job.state, "lane": job.lane,
        "liveness_type": job.liveness_type, "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at), "finished_at": _iso(job.finished_at),
        "callback_url": job.callback_url, "metadata": job.meta, "outcome": outcome,
    }


def load(session: Any, *, job_id: int | None = None, key: str | None = None,
         tenant_id: int | None = None) -> tuple[Job, Result | None] | None:
    """A job and its result, by id or by idempotency key (keys are per tenant: a key is
    looked up within ``tenant_id``, the default tenant when None)."""
    q = select(Job, Result).outerjoin(Result, Result.job_id == Job.id)
    if job_id is not None:
        q = q.where(Job.id == job_id)
    else:
        q = q.where(Job.tenant_id == (DEFAULT_TENANT_ID if tenant_id is None else tenant_id),
                    Job.idempotency_key == key)
    row = session.execute(q).first()
    return (row[0], row[1]) if row is not None else None


def fingerprint(photo: str, video: str, liveness_type: str, validate_data: str | None,
                lane: str, callback_url: str | None, metadata: Any,
                region: str) -> tuple[Any, ...]:
    """What makes two submissions with one key the same request. Uploads are compared by
    their content-addressed sources (so by their MD5s), URLs as given; ``region`` is the
    region the job is verified in (FACEID_REGION when the request names none), so a
    region given or left out is the same request when it comes to the same region."""
    return (photo, video, liveness_type, validate_data or None, lane, callback_url or None,
            metadata or None, region)


def fingerprint_of(job: Job, default_region: str) -> tuple[Any, ...]:
    """A stored job's fingerprint; ``default_region``: FACEID_REGION."""
    return fingerprint(job.photo_source, job.video_source, job.liveness_type,
                       job.validate_data, job.lane, job.callback_url, job.meta,
                       job.region or default_region)
