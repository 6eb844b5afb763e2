"""Leases: a process proves it is alive by renewing a key in Redis.

Each worker process holds one lease (``faceid:lease:<id>``, lifetime WORKER_LEASE_SECONDS),
renewed by a daemon thread every third of it. A job the worker takes names the lease
(``jobs.lease_id``). The feeder (feeder.py) reads the leases of the running jobs every
second, and the jobs of a lease that is gone (its process was killed, or its host lost) are
due again at once, whatever the broker's visibility timeout says.

A lost Redis (FLUSHALL, a restart without the key, a failover) loses live leases too.
Every heartbeat sets its key afresh, so a live worker's lease is back within a third of its
lifetime; and no lease is counted dead until Redis has kept its epoch (``faceid:epoch``,
written when found missing) and been up for a whole lease lifetime.

The same primitive, taken with NX, is the feeder's lock: one feeder at a time, replaced
within a lease lifetime when its process dies.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta

import redis
from sqlalchemy.exc import DBAPIError

from faceid_batch.db import write_scope
from faceid_batch.models import JobState
from faceid_batch.scheduling import schedule
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)

LEASE_PREFIX = "faceid:lease:"
EPOCH_KEY = "faceid:epoch"

_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
          "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0")
_DROP = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def new_lease_id() -> str:
    """A lease id that says where it runs: host, pid and a random part."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lock:
    """A key held with a token (SET NX PX), renewed by its holder; released by the holder."""

    def __init__(self, client: redis.Redis, key: str, ttl: float) -> None:
        self.redis = client
        self.key = key
        self.ttl_ms = int(ttl * 1000)
        self.token = uuid.uuid4().hex
        self._renew = client.register_script(_RENEW)
        self._drop = client.register_script(_DROP)

    def hold(self) -> bool:
        """Renew the lock if we hold it, else try to take it; True if we hold it now."""
        if self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
            return True
        return bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        try:
            self._drop(keys=[self.key], args=[self.token])
        except redis.RedisError:
            pass  # it expires by itself


class WorkerLease:
    """This process's lease, renewed by a daemon thread every third of its lifetime.

    It also gives back jobs a task could not give back itself because the database was away
    (``release_later``): the heartbeat retries until the database takes the change.
    """

    def __init__(self, client: redis.Redis, database_url: str, ttl: float,
                 lease_id: str | None = None) -> None:
        self.redis = client
        self.database_url = database_url
        self.ttl = ttl
        self.id = lease_id or new_lease_id()
        self.key = LEASE_PREFIX + self.id
        self._pending: dict[int, float] = {}  # job id -> when it may run again (epoch s)
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WorkerLease:
        """Write the lease now (before any job names it) and start the heartbeat."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="worker-lease", daemon=True)
        self._thread.start()
        return self

    def beat(self) -> bool:
        """Renew the lease once (SET: a lease Redis lost comes back); False if Redis is away."""
        try:
            self.redis.set(self.key, str(time.time()), px=int(self.ttl * 1000))
            return True
        except redis.RedisError as exc:
            log.warning("worker lease %s not renewed: %s", self.id, type(exc).__name__)
            return False

    def release_later(self, job_id: int, delay: float = 0.0) -> None:
        """Give ``job_id`` back (due after ``delay``) as soon as the database is back."""
        with self._guard:
            self._pending[job_id] = time.time() + delay

    def pending(self) -> list[int]:
        with self._guard:
            return list(self._pending)

    def flush_releases(self) -> int:
        """Give back the jobs held for ``release_later``; return how many went back."""
        with self._guard:
            pending = dict(self._pending)
        if not pending:
            return 0
        done = 0
        try:
            with write_scope(self.database_url) as session:
                for job_id, at in pending.items():
                    due = utcnow() + timedelta(seconds=max(0.0, at - time.time()))
                    if schedule.reschedule(session, job_id, self.id, due, JobState.QUEUED):
                        done += 1
        except DBAPIError:
            return 0  # still away: the next heartbeat tries again
        with self._guard:
            for job_id in pending:
                self._pending.pop(job_id, None)
        if done:
            log.warning("gave back %d job(s) the database could not take before", done)
        return done

    def stop(self) -> None:
        """Give back what is pending, then drop the lease (a clean shutdown)."""
        self._stop.set()
        self.flush_releases()
        try:
            self.redis.delete(self.key)
        except redis.RedisError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.beat()
            self.flush_releases()


def _settled(now_s: float, since: bytes | None, uptime: int, ttl: float) -> bool:
    return since is not None and now_s - float(since) >= ttl and uptime >= ttl


def dead_leases(client: redis.Redis, lease_ids: list[str], ttl: float) -> list[str] | None:
    """The leases among ``lease_ids`` that are gone; None while Redis is too new to tell.

    One MULTI reads the leases with Redis's clock, epoch and uptime, so a FLUSHALL between
    the reads cannot make live leases look dead. A missing epoch is written here.
    """
    pipe = client.pipeline(transaction=True)
    pipe.time()
    pipe.hget(EPOCH_KEY, "since")
    pipe.info("server")
    for lease_id in lease_ids:
        pipe.exists(LEASE_PREFIX + lease_id)
    (secs, micros), since, info, *exists = pipe.execute()
    redis_now = secs + micros / 1e6
    if since is None:
        client.hsetnx(EPOCH_KEY, "since", repr(redis_now))
        log.warning("Redis has no epoch (new, flushed or failed over): no worker lease is "
                    "judged for %.0f s", ttl)
        return None
    if not _settled(redis_now, since, int(info.get("uptime_in_seconds", 0)), ttl):
        return None
    return [lease_id for lease_id, alive in zip(lease_ids, exists, strict=True) if not alive]
