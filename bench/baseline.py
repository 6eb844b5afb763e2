"""The comparison point for bench/throughput.py: the same verify pipeline, limited only by
Celery's own ``rate_limit="20/s"`` (which is per worker node) instead of our global limiter.

Loaded into a worker with ``celery -A faceid_batch.worker worker -I bench.baseline``.
"""

from __future__ import annotations

import time

from celery import Task

from faceid_batch.ratelimit import GlobalRateLimiter, Slot
from faceid_batch.tasks import _JobLock, _verify_locked
from faceid_batch.worker import celery_app, resources


class _NoLimiter(GlobalRateLimiter):
    """Every call may start at once: only Celery's rate_limit holds calls back."""

    def __init__(self) -> None:  # no Redis budget at all
        self._sleep = time.sleep
        self._executor = None

    def reserve_slot(self, lane: str = "onboarding", timeout: float | None = None) -> Slot:
        return Slot(time.monotonic(), 0, "")

    def started_at(self, slot: Slot, when: float) -> float:
        return 0.0

    def release(self, slot: Slot) -> None:
        pass


@celery_app.task(bind=True, name="bench.verify_plain", rate_limit="20/s", acks_late=True,
                 ignore_result=True, max_retries=None)
def verify_plain(self: Task, job_id: int) -> str:
    res = resources()
    res.__dict__["limiter"] = _NoLimiter()
    with _JobLock(res, job_id, 300) as locked:
        if not locked:
            raise self.retry(countdown=5)
        return _verify_locked(self, res, job_id)
