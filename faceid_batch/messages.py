"""The Celery application as producers see it: the broker, the lanes, the task names, and
sending messages (one at once, or many through one Redis pipeline).

The tasks themselves are in ``tasks.py`` and the worker's side (signals, per-process
resources) in ``worker.py``; anything that only sends a message imports this module, so no
producer depends on the worker.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.entity import Queue
from kombu.transport.redis import Channel as RedisChannel

from faceid_batch.models import Lane
from faceid_batch.settings import Settings, get_settings

VERIFY_TASK = "faceid_batch.verify"
DELIVER_WEBHOOK_TASK = "faceid_batch.deliver_webhook"
PURGE_TASK = "faceid_batch.purge"
SWEEP_TASK = "faceid_batch.sweep"
CHUNK = 1000

# kombu's Redis transport keeps a queue's messages of each priority step in a list of their
# own ("<queue>" for step 0, "<queue>\x06\x16<step>" for the others), and a worker takes from
# every queue's list of one step before any list of the next. So backfill messages go at the
# last step: a sign-up at any step is taken first. Sign-ups go at the first step, but with
# several tenants only those of a tenant with few in flight (scheduling/onboarding.py): one
# tenant's burst queued in Redis does not hold another's single sign-up behind it.
PRIORITY_FIRST = 0
PRIORITY_ONBOARDING = 3
PRIORITY_BACKFILL = 9


def lane_priority(lane: str) -> int:
    """The priority step of a lane's messages unless told otherwise."""
    return PRIORITY_BACKFILL if lane == Lane.BACKFILL.value else PRIORITY_FIRST


def lane_lists(lane: str) -> list[str]:
    """The Redis lists that hold a lane's messages, one per priority step, in the order a
    worker takes from them."""
    return [lane if step == 0 else f"{lane}{RedisChannel.sep}{step}"
            for step in RedisChannel.priority_steps]


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
            "task": PURGE_TASK,
            "schedule": settings.purge_interval_seconds,
            "args": [settings.purge_after_days],
            "options": {"queue": Lane.BACKFILL.value, "priority": PRIORITY_BACKFILL},
        }
    return app


_app: Celery | None = None
_app_lock = threading.Lock()


def celery_app() -> Celery:
    """This process's Celery app, built from the settings the first time it is needed (so
    importing a producer module never reads the settings: a bad one is reported by the
    command that loads them)."""
    global _app
    if _app is None:
        with _app_lock:
            if _app is None:
                _app = make_celery()
    return _app


def lane_depths(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each lane's lists (every priority step), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for lane in Lane:
        for key in lane_lists(lane.value):
            pipe.llen(key)
    lengths = iter(pipe.execute())
    steps = len(RedisChannel.priority_steps)
    return {lane.value: sum(next(lengths) for _ in range(steps)) for lane in Lane}


def send_verify(job_id: int, lane: str, priority: int | None = None) -> None:
    """Send one ``verify`` message to ``lane`` now (raises when Redis cannot take it), at
    ``priority`` (default: the lane's, ``lane_priority``)."""
    celery_app().send_task(VERIFY_TASK, args=[job_id], queue=lane,
                           priority=lane_priority(lane) if priority is None else priority)


def send_webhooks(claims: Iterable[tuple[int, str]], lane: str,
                  app: Celery | None = None) -> int:
    """Send one ``deliver_webhook`` message per claimed callback (its id and claim token)
    to ``lane``, through one Redis pipeline."""
    return send_many(DELIVER_WEBHOOK_TASK, (list(c) for c in claims), lane, app)


def send_verify_many(job_ids: Iterable[int], lane: str, priority: int | None = None,
                     app: Celery | None = None) -> int:
    """Send one ``verify`` message per job id to ``lane`` through one Redis pipeline, at
    ``priority`` (default: the lane's, ``lane_priority``)."""
    return send_many(VERIFY_TASK, ([job_id] for job_id in job_ids), lane, app, priority)


def send_many(task: str, arg_lists: Iterable[list[object]], lane: str,
              app: Celery | None = None, priority: int | None = None) -> int:
    """Send one ``task`` message per argument list to ``lane`` through one Redis pipeline.

    Celery builds each message (``amqp.as_task_v2``, the same code ``apply_async`` uses) and
    kombu publishes it inside ``Producer.batch``: one round trip per thousand messages
    instead of one per message. ``apply_async`` per job measured about 2,000 messages/s
    here; this path about 20,000.
    """
    app = app or celery_app()
    amqp = app.amqp
    step = lane_priority(lane) if priority is None else priority
    origin = anon_nodename()  # what apply_async puts there, computed once
    sent = 0
    with app.producer_or_acquire() as producer, producer.batch(CHUNK):
        for args in arg_lists:
            task_id = str(uuid.uuid4())
            headers, properties, body, _ = amqp.as_task_v2(
                task_id, task, args=args, kwargs={},
                argsrepr=repr(args), kwargsrepr="{}", ignore_result=True, origin=origin,
            )
            # The lane queues are declared by the workers; declaring per message is what
            # made apply_async slow (a Queue copy and a cache lookup each time).
            producer.publish(
                body, exchange="", routing_key=lane, serializer="json", headers=headers,
                declare=None, retry=False, delivery_mode=2, priority=step, **properties,
            )
            sent += 1
    return sent
