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

from faceid_batch import db, messages
from faceid_batch.call import billing
from faceid_batch.call.billing import BillingTable
from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.call.faceid_client import FaceIDClient
from faceid_batch.call.ratelimit import ONBOARDING_HORIZON, GlobalRateLimiter
from faceid_batch.egress import Egress, Policy
from faceid_batch.ops import logs, metrics
from faceid_batch.scheduling import feeder
from faceid_batch.scheduling.leases import WorkerLease
from faceid_batch.settings import Settings, get_settings
from faceid_batch.stage.storage import MediaStager

log = logging.getLogger(__name__)

celery_app = messages.celery_app()
app = celery_app  # `celery -A faceid_batch.worker` finds `app`


@after_setup_logger.connect
@after_setup_task_logger.connect
def _setup_logging(logger: logging.Logger, **_: object) -> None:
    s = get_settings()
    secrets = tuple(v.get_secret_value() for v in (
        s.faceid_secret_key, s.faceid_token, s.cos_secret_key, s.cos_token, s.webhook_secret)
        if v is not None)
    logs.configure(logger, s.log_format, secrets)


_pool_threads = 1


def pool_threads() -> int:
    """How many tasks this process runs at once (the threads pool's size; 1 elsewhere)."""
    return _pool_threads


@worker_init.connect
def _note_pool_size(sender: object = None, **_: object) -> None:
    global _pool_threads
    if getattr(sender, "pool_cls", None) is not None and "thread" in str(
            getattr(sender, "pool_cls", "")).lower():
        _pool_threads = int(getattr(sender, "concurrency", 1) or 1)


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
    feeder.start(resources)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _drop_lease(**_: object) -> None:
    # A clean exit hands this process's jobs and the feeder lock over at once, instead of
    # after a lease lifetime.
    feeder.stop()
    if _current is not None:
        _current.stop()


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
        s = self.settings
        s.require_api()
        # A share of this process's task threads may fetch producers' URLs at once.
        return MediaStager(s, egress=self.egress, slots=self.egress_slots)

    @cached_property
    def breaker(self) -> AccountBreaker:
        return AccountBreaker(self.redis, probe_after=self.settings.breaker_probe_after)

    @cached_property
    def lease(self) -> WorkerLease:
        """This process's worker lease (its heartbeat starts with it)."""
        s = self.settings
        return WorkerLease(self.redis, s.database_url, s.worker_lease_seconds).start()

    @cached_property
    def billing(self) -> BillingTable:
        """Which answers Tencent bills: the defaults with BILLING_OVERRIDES in front."""
        return billing.table(self.settings.billing_overrides)

    @cached_property
    def egress_slots(self) -> threading.BoundedSemaphore:
        """The threads of this process that may wait on producers' servers at once
        (EGRESS_SHARE of the pool): fetches of media URLs and callbacks take turns."""
        return threading.BoundedSemaphore(
            max(1, int(pool_threads() * self.settings.egress_share)))

    @cached_property
    def egress(self) -> Egress:
        """Every fetch and POST made on a producer's behalf: media URLs, best frames,
        completion callbacks (egress.py)."""
        return Egress(Policy(self.settings.egress_networks))

    def stop(self) -> None:
        """Stop this process's lease, if one was started (its heartbeat, its release)."""
        if "lease" in self.__dict__:  # cached_property: built only once something asked
            self.lease.stop()

    @cached_property
    def limiter(self) -> GlobalRateLimiter:
        s = self.settings
        return GlobalRateLimiter(
            self.redis, s.faceid_rate_limit, window=1.0 + s.rate_limit_margin_ms / 1000,
            onboarding_horizon=ONBOARDING_HORIZON,
        )


_current: Resources | None = None
_inherited: list[Resources] = []
_lock = threading.Lock()


def resources() -> Resources:
    """This process's resources: built once, by the first task that asks, never per task."""
    global _current
    res = _current
    if res is None:
        with _lock:
            if _current is None:
                _current = Resources(get_settings())
            res = _current
    return res


def drop_resources() -> None:
    """Stop this process's lease and forget its resources; the next task builds them again
    from the settings of that moment (a test that changed the environment, a reload)."""
    global _current
    with _lock:
        res, _current = _current, None
    if res is not None:
        res.stop()


def _forget_after_fork() -> None:
    # A prefork child builds its own clients and lease. The parent's stay referenced: their
    # sockets are the parent's, and closing them from here would close them there.
    global _current
    if _current is not None:
        _inherited.append(_current)
    _current = None


os.register_at_fork(after_in_child=_forget_after_fork)
