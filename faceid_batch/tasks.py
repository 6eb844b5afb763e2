"""Every Celery task, declared through ``faceid_task`` so the defaults hold everywhere.

``verify`` runs one job (pipeline.run_job); ``deliver_webhook``, ``sweep`` and ``purge`` run
what notify, recovery and purge do. No other module declares a task, so none imports this
one. Tasks get job ids, never rows, and re-load the row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task

from faceid_batch import messages, pipeline
from faceid_batch.admin import purge
from faceid_batch.outcome import notify
from faceid_batch.scheduling import recovery
from faceid_batch.worker import celery_app, resources

_ALLOWED_OPTIONS = {"name", "queue", "soft_time_limit", "time_limit"}


def faceid_task(**options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Declare a task with the project defaults; refuse options we have not vetted."""
    unknown = set(options) - _ALLOWED_OPTIONS
    if unknown:
        raise TypeError(f"faceid_task does not take {sorted(unknown)}")
    if "name" not in options:
        raise TypeError("faceid_task needs an explicit name")
    decorator: Callable[[Callable[..., Any]], Task] = celery_app.task(
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        # Attempts are counted in the database (MAX_ATTEMPTS), not by Celery.
        max_retries=None,
        **options,
    )
    return decorator


@faceid_task(name=messages.VERIFY_TASK)
def verify(self: Task, job_id: int) -> str:
    """Run one verification job to its next state."""
    return pipeline.run_job(resources(), job_id)


@faceid_task(name=messages.SWEEP_TASK)
def sweep(self: Task) -> dict[str, int]:
    """Re-send jobs that no message will bring back (see recovery.sweep_stuck_jobs)."""
    return recovery.sweep_stuck_jobs(resources())


@faceid_task(name=messages.DELIVER_WEBHOOK_TASK)
def deliver_webhook(self: Task, message: int, token: str | None = None) -> str:
    """POST one claimed completion callback once; a failure makes it due again later."""
    if token is None:
        # A message of the earlier kind (its argument a job id): the job's callback becomes
        # a due row like any other.
        notify.queue_again(resources(), message)
        return "queued-again"
    return notify.deliver(resources(), message, token)


@faceid_task(name=messages.PURGE_TASK)
def purge_task(self: Task, older_than_days: float) -> str:
    """The scheduled purge (beat, when PURGE_AFTER_DAYS is set)."""
    res = resources()
    return purge.purge_media(res.settings, older_than_days, stager=res.stager).describe()
