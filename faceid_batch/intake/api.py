"""The Python API for onboarding pipelines: submit one job, wait for its outcome.

    from faceid_batch.intake import api

    job_id = api.submit("id.jpg", "selfie.mp4", "LIP", "4721", key="signup-42",
                        callback_url="https://signup.internal/faceid-done")
    outcome = api.wait(job_id, timeout=30)   # raises api.WaitTimeout if not final by then
    if outcome.passed: ...

Jobs go to the ``onboarding`` lane, which workers take before ``backfill``. With a
``callback_url`` the outcome is also POSTed there, signed (see ``notify.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, SubmitError, check_callback
from faceid_batch.intake.submit import submit as submit_job
from faceid_batch.models import Job, JobState, Lane, Result
from faceid_batch.settings import Settings, get_settings

__all__ = ["Outcome", "SubmitError", "WaitTimeout", "outcome", "submit", "wait"]


@dataclass(frozen=True)
class Outcome:
    """Where a job stands; ``final`` once FaceID answered or the job failed."""

    job_id: int
    key: str
    state: str
    passed: bool | None
    result: str | None  # FaceID's Result (or our Local.* / error code when it failed)
    sim: float | None
    description: str | None
    request_id: str | None
    error: str | None

    @property
    def final(self) -> bool:
        return self.state in JobState.final()


class WaitTimeout(TimeoutError):
    """The job was not final within the timeout; ``outcome`` is where it stood."""

    def __init__(self, outcome: Outcome, timeout: float) -> None:
        super().__init__(f"job {outcome.job_id} still {outcome.state} after {timeout:g}s")
        self.outcome = outcome


def submit(
    photo: str,
    video: str,
    liveness_type: str,
    validate_data: str | None = None,
    *,
    key: str,
    callback_url: str | None = None,
    lane: str = Lane.ONBOARDING.value,
    metadata: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> int:
    """Validate, store and enqueue one job; return its id (the existing one for a known key).

    Raises ``SubmitError`` (a ``ValueError``) for bad input, before anything is stored. A
    job that preflight refuses is stored final (state ``refused``, ``result`` = the code
    the API would have answered) and never sent: ``wait`` returns it at once.
    """
    settings = settings or get_settings()
    callback_url = check_callback(settings, callback_url)
    job_id, _ = submit_job(settings, JobSpec(
        idempotency_key=key, photo=photo, video=video, liveness_type=liveness_type,
        validate_data=validate_data, lane=lane, callback_url=callback_url, metadata=metadata,
    ), source="api")
    return job_id


def outcome(job_id: int, *, settings: Settings | None = None) -> Outcome:
    """The job's current state and, once final, its outcome."""
    settings = settings or get_settings()
    with session_scope(settings.database_url) as session:
        row = session.execute(
            select(Job, Result).outerjoin(Result, Result.job_id == Job.id).where(Job.id == job_id)
        ).first()
        if row is None:
            raise LookupError(f"job {job_id}: no such job")
        job, result = row
        return Outcome(
            job_id=job.id, key=job.idempotency_key, state=job.state, passed=job.passed,
            result=job.result_code, sim=result.sim if result else None,
            description=result.description if result else None,
            request_id=result.request_id if result else None, error=job.error_message,
        )


def wait(job_id: int, timeout: float = 30.0, *, settings: Settings | None = None) -> Outcome:
    """Poll until the job is final and return its outcome; raise ``WaitTimeout`` after
    ``timeout`` seconds. Polls often at first (an onboarding answer takes seconds), then
    every half second."""
    settings = settings or get_settings()
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        current = outcome(job_id, settings=settings)
        if current.final:
            return current
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(current, timeout)
        time.sleep(min(pause, left))
        pause = min(pause * 1.5, 0.5)
