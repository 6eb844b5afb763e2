"""The Celery application and the per-process resources its tasks use.

Start a worker with ``faceid-batch worker`` (or ``celery -A faceid_batch.worker worker``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from functools import cached_property

import redis
from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from kombu import Queue

from faceid_batch import db, logs, metrics
from faceid_batch.breaker import AccountBreaker
from faceid_batch.faceid_client import FaceIDClient
from faceid_batch.leases import WorkerLease
from faceid_batch.models import Lane
from faceid_batch.ratelimit import ONBOARDING_HORIZON, GlobalRateLimiter
from faceid_batch.settings import Settings, get_settings
from faceid_batch.storage import MediaStager

log = logging.getLogger(__name__)

def make_celery(settings: Settings | None = None) -> Celery:
    """Build the Celery app for ``settings`` (the environment's by default)."""
    settings = settings or get_settings()
    app = Celery("faceid_batch", broker=settings.redis_url, include=["faceid_batch.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_default_queue=Lane.ONBOARDING.value,
        task_queues=[Queue(Lane.ONBOARDING.value), Queue(Lane.BACKFILL.value)],
        broker_transport_options={
            # Messages a worker took but never acknowledged (it was killed) come back after
            # this long. Jobs do not wait for it: a killed worker's jobs are due again when
            # its lease runs out (leases.py), and a late duplicate is dropped at the claim.
            # Webhook countdown retries are kept under a third of it (tasks.max_countdown).
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_throttle": 1,
            # A worker killed during its restore pass leaves the restore mutex held; kombu's
            # default (300 s) would hold back every other worker's restores that long.
            "unacked_mutex_expire": min(300, max(10, settings.broker_visibility_timeout)),
            # Fixed queue order: a worker takes from 'onboarding' before 'backfill'
            # (the default round-robin would let a backfill backlog delay a sign-up).
            "queue_order_strategy": "priority",
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        # The feeder (feeder.py), in every worker and in beat, runs the recovery sweep.
        beat_schedule={},
    )
    if settings.purge_after_days:
        # The retention purge of biometric data (purge.py), on the same beat as the sweep.
        app.conf.beat_schedule["media-purge"] = {
            "task": "faceid_batch.purge",
            "schedule": settings.purge_interval_seconds,
            "args": [settings.purge_after_days],
            "options": {"queue": Lane.BACKFILL.value},
        }
    return app


celery_app = make_celery()
app = celery_app  # `celery -A faceid_batch.worker` finds `app`


@after_setup_logger.connect
@after_setup_task_logger.connect
def _setup_logging(logger: logging.Logger, **_: object) -> None:
    s = get_settings()
    secrets = tuple(v.get_secret_value() for v in (
        s.faceid_secret_key, s.faceid_token, s.cos_secret_key, s.cos_token, s.webhook_secret)
        if v is not None)
    logs.configure(logger, s.log_format, secrets)


@worker_init.connect
@worker_process_init.connect
def _set_switch_interval(**_: object) -> None:
    # Forty task threads share one GIL. A thread whose rate-limit slot has come must get the
    # GIL back from the busy ones (staging, parsing); each ms it waits is a ms the shared
    # schedule loses (ratelimit.started_at writes the late start back).
    sys.setswitchinterval(get_settings().worker_switch_interval_ms / 1000)


@worker_init.connect
@worker_process_init.connect
def _checkpoint_in_background(**_: object) -> None:
    # On SQLite, the WAL is checkpointed by a thread of the worker process, not by whichever
    # answer's commit crosses the threshold (see db.checkpoint_in_background). The threads
    # pool runs in the main process (worker_init); prefork pool processes start their own.
    db.checkpoint_in_background(get_settings().database_url)


@task_prerun.connect
def _bind_job(task: object = None, args: tuple | None = None, **_: object) -> None:
    logs.clear()
    if getattr(task, "name", None) in logs.JOB_TASKS and args:
        logs.bind(job_id=args[0])


@task_postrun.connect
def _unbind_job(**_: object) -> None:
    logs.clear()


@worker_ready.connect
def _start_metrics(**_: object) -> None:
    s = get_settings()
    metrics.start(s.metrics_port, s.metrics_addr, resources)


@worker_ready.connect
@beat_init.connect
def _start_feeder(**_: object) -> None:
    # Every worker and beat runs a feeder candidate; the one holding the lock feeds. Started
    # once the pool is up, so no prefork child is forked from a process with its thread.
    from faceid_batch import feeder

    feeder.start(resources)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _drop_lease(**_: object) -> None:
    # A clean exit hands this process's jobs and the feeder lock over at once, instead of
    # after a lease lifetime.
    from faceid_batch import feeder

    feeder.stop()
    res = _resources.get(os.getpid())
    if res is not None and "lease" in res.__dict__:
        res.lease.stop()


@dataclass
class Resources:
    """Clients built once per worker process and shared by its task threads."""

    settings: Settings

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, health_check_interval=30)

    @cached_property
    def faceid(self) -> FaceIDClient:
        s = self.settings
        s.require_api()
        assert s.faceid_secret_id and s.faceid_secret_key
        return FaceIDClient(
            endpoint=s.faceid_endpoint,
            region=s.faceid_region,
            secret_id=s.faceid_secret_id.get_secret_value(),
            secret_key=s.faceid_secret_key.get_secret_value(),
            token=s.faceid_token.get_secret_value() if s.faceid_token else None,
            connect_timeout=s.faceid_connect_timeout,
            read_timeout=s.faceid_read_timeout,
        )

    @cached_property
    def stager(self) -> MediaStager:
        self.settings.require_api()
        return MediaStager(self.settings)

    @cached_property
    def breaker(self) -> AccountBreaker:
        return AccountBreaker(self.redis, probe_after=self.settings.breaker_probe_after)

    @cached_property
    def lease(self) -> WorkerLease:
        """This process's worker lease (its heartbeat starts with it)."""
        s = self.settings
        return WorkerLease(self.redis, s.database_url, s.worker_lease_seconds).start()

    @cached_property
    def limiter(self) -> GlobalRateLimiter:
        s = self.settings
        return GlobalRateLimiter(
            self.redis, s.faceid_rate_limit, window=1.0 + s.rate_limit_margin_ms / 1000,
            onboarding_horizon=ONBOARDING_HORIZON,
        )


_resources: dict[int, Resources] = {}
_lock = threading.Lock()


def resources() -> Resources:
    """This process's resources (rebuilt after a fork, never per task)."""
    pid = os.getpid()
    res = _resources.get(pid)
    if res is None:
        with _lock:
            res = _resources.get(pid)
            if res is None:
                res = _resources[pid] = Resources(get_settings())
    return res
