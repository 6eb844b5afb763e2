"""The Celery application, its signals, and the one Resources of each worker process.

Start a worker with ``faceid-batch worker`` (or ``celery -A faceid_batch.worker worker``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

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
from sqlalchemy.exc import SQLAlchemyError

from faceid_batch import db, messages, tenants
from faceid_batch.call import accounts
from faceid_batch.ops import logs, metrics
from faceid_batch.resources import Resources, set_pool_threads
from faceid_batch.scheduling import feeder
from faceid_batch.settings import Settings, SettingsError, get_settings

__all__ = ["Resources", "app", "celery_app", "drop_resources", "resources"]

log = logging.getLogger(__name__)

celery_app = messages.celery_app()
app = celery_app  # `celery -A faceid_batch.worker` finds `app`


@after_setup_logger.connect
@after_setup_task_logger.connect
def _setup_logging(logger: logging.Logger, **_: object) -> None:
    s = get_settings()
    secrets = tuple(v.get_secret_value() for v in (
        s.faceid_secret_key, s.faceid_token, s.cos_secret_key, s.cos_token, s.webhook_secret)
        if v is not None) + _account_keys(s) + _tenant_secrets(s)
    logs.configure(logger, s.log_format, secrets)


def _tenant_secrets(s: Settings) -> tuple[str, ...]:
    """The tenants' webhook secrets (current and previous), read once at start-up and kept
    out of the logs too. A secret rotated after start-up is not in this list; that is
    covered because no code logs a secret (tenants.signing_secret's callers sign with it
    and print nothing of it): this list is a second line of defence, not the first."""
    try:
        return tenants.all_secrets(s.database_url)
    except SQLAlchemyError:
        return ()  # no database yet (or not upgraded): the worker says so when it first needs it


def _account_keys(s: Settings) -> tuple[str, ...]:
    """The SecretKeys of the accounts file's accounts, kept out of the logs too."""
    if not s.faceid_accounts_file:
        return ()
    try:
        return tuple(a.secret_key for a in accounts.load(s) if a.secret_key)
    except SettingsError:
        return ()  # the worker stops on it with a clear error when it first calls


@worker_init.connect
def _note_pool_size(sender: object = None, **_: object) -> None:
    if "thread" in str(getattr(sender, "pool_cls", "")).lower():
        set_pool_threads(int(getattr(sender, "concurrency", 1) or 1))


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
def _bind_job(task: object = None, args: tuple[Any, ...] | None = None,
              **_: object) -> None:
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
