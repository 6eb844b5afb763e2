"""The comparison point for bench/throughput.py: the same verify pipeline, limited only by
Celery's own ``rate_limit="20/s"`` (which is per worker node) instead of our global limiter.

Loaded into a worker with ``celery -A faceid_batch.worker worker -I bench.baseline``: the
``faceid_batch.verify`` task of that worker gets Celery's rate limit, and its process a
limiter that lets every call start at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from celery.signals import worker_init, worker_process_init

from faceid_batch.call.ratelimit import Send, Sent
from faceid_batch.tasks import verify
from faceid_batch.worker import resources

T = TypeVar("T")

# Celery builds its per-node token buckets from the tasks' rate_limit when the consumer
# starts, which is after this module is imported (-I).
verify.rate_limit = "20/s"


class NoLimiter:
    """Every call may start at once: only Celery's rate_limit holds calls back. It answers
    what the pipeline asks of a limiter (GlobalRateLimiter.call)."""

    def call(self, lane: str, send: Send[T], ready: Callable[[], bool] | None = None,
             on_too_late: Callable[[], None] | None = None) -> Sent[T] | None:
        if ready is not None and not ready():
            return None
        now = time.monotonic()
        started: list[float] = []
        result = send(now, now + 3600.0, started.append)
        return Sent(result, 0.0, 0.0 if started else None)


@worker_init.connect
@worker_process_init.connect
def _without_global_limiter(**_: object) -> None:
    resources().limiter = NoLimiter()  # in place of the cached global limiter
