"""The feeder: keeps each lane's Redis list topped up from the due rows of the database.

Exactly one feeder works at a time. Every worker process and beat runs a candidate thread;
the one holding the feeder lock (``faceid:feeder``, a lease of WORKER_LEASE_SECONDS renewed
on every round) feeds, and when its process dies another takes the lock within a lease
lifetime. Each round (every FEED_INTERVAL_SECONDS) it:

- tops each lane's list up to its depth (QUEUE_DEPTH), onboarding first, taking due rows
  from the batches due in that lane in proportion to their weights (``FairShare``); within
  a batch, jobs that ran before (retries, recovered jobs) go before fresh rows, each in the
  order they became due. Paused and cancelled batches are not fed, nor is anything while
  the account breaker is open and its probe is not due. With several tenants the
  onboarding lane is fed by tenant instead: up to its bound of sign-ups in flight
  (onboarding.py), shared between the tenants with sign-ups due by their weights;
- every second, makes the running jobs of a gone worker lease due again (leases.py);
- every LOST_CHECK_SECONDS, makes due again the jobs whose message went out more than
  LOST_GRACE ago and is neither in a lane's list nor taken by a worker (in the last
  TAKEN_GRACE_SECONDS, without claiming the job): lost with a Redis that restarted or was
  flushed, with a worker killed between Redis handing it the message and recording it as
  taken, or held by a process that died before it could claim the job;
- every SWEEP_INTERVAL_SECONDS, runs the backstop sweep (recovery.py);
- claims the completion callbacks that are due and sends them (callbacks.py).

Redis so holds a few seconds of work whatever the backlog, and losing it loses nothing the
database cannot send again.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from faceid_batch.db import session_scope, write_scope
from faceid_batch.messages import (
    PRIORITY_ONBOARDING,
    lane_depths,
    send_verify_many,
    send_webhooks,
)
from faceid_batch.models import Job, Lane, table
from faceid_batch.parts import FeederParts
from faceid_batch.scheduling import callbacks, leases, onboarding, recovery, schedule
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)

FEEDER_KEY = "faceid:feeder"
LEASE_CHECK_SECONDS = 1.0
LOST_CHECK_SECONDS = 2.0
# A message out this long that is in no list and not taken by a worker is lost. Well above
# the milliseconds between marking a row out and its message reaching Redis.
LOST_GRACE = timedelta(seconds=5)
# A message a worker took this long ago while its job is still not claimed will not run
# there: the process that took it died (a prefork child killed with it in its pipe, a worker
# killed between taking and claiming), and Redis would hand it out again only after the
# visibility timeout. Far above the time a taken message waits for a free thread or child.
TAKEN_GRACE_SECONDS = 30.0
# The due batches of a lane, their states and weights are read again after this long.
KEYS_REFRESH_SECONDS = 1.0
# Completion callbacks claimed and sent per round (at most four rounds a second).
CALLBACKS_PER_ROUND = 100
ENABLED = True  # bench.baseline turns the feeder off for its own comparison run

_J = table(Job).c
Key = Hashable  # a batch id, or None for the jobs of no batch



class FairShare:
    """Stride scheduling: each pick goes to the key with the least pass, whose pass then
    grows by 1 / its weight, so keys due together get picks in proportion to their weights.

    A key that comes back after being away joins at the lowest pass of the keys present:
    it gets its share from now on, not a burst for the time it was away.
    """

    def __init__(self) -> None:
        self.passes: dict[Key, float] = {}

    def split(self, n: int, weights: dict[Key, float]) -> dict[Key, int]:
        """How many of ``n`` picks each key gets."""
        if n <= 0 or not weights:
            return {}
        floor = min((self.passes[k] for k in weights if k in self.passes), default=0.0)
        passes = {k: max(self.passes.get(k, floor), floor) for k in weights}
        heap = [(passes[k], _order(k), k) for k in weights]
        heapq.heapify(heap)
        alloc = dict.fromkeys(weights, 0)
        for _ in range(n):
            _, order, k = heapq.heappop(heap)
            alloc[k] += 1
            passes[k] += 1.0 / weights[k]
            heapq.heappush(heap, (passes[k], order, k))
        self.passes = passes
        return {k: m for k, m in alloc.items() if m}

    def refund(self, key: Key, count: int, weight: float) -> None:
        """Picks a key was given but had no due job for."""
        if key in self.passes:
            self.passes[key] -= count / weight


def _order(key: Key) -> tuple[bool, Any]:
    return (key is not None, key if key is not None else 0)


class Feeder:
    """One feeder candidate; ``round`` does one round if it holds the lock."""

    def __init__(self, res: FeederParts,
                 send: Callable[[list[int], str, int | None], Any] = send_verify_many,
                 send_callbacks: Callable[[list[tuple[int, str]], str], Any] = send_webhooks,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.res = res
        self.s = res.settings
        self.lock = leases.Lock(res.redis, FEEDER_KEY, self.s.worker_lease_seconds)
        self.send = send
        self.send_callbacks = send_callbacks
        # Injected so tests move time on instead of sleeping: ``clock`` for the rounds'
        # own schedule and caches, ``wall`` for the breaker's probe time.
        self.clock = clock
        self.wall = wall
        self.fair = {lane.value: FairShare() for lane in Lane}
        # The onboarding lane of a deployment of several tenants is shared by tenant.
        self.fair_tenants = FairShare()
        self._keys: dict[str, tuple[float, dict[Key, float]]] = {}
        self._next = {"leases": 0.0, "lost": 0.0, "sweep": clock()}
        self.leading = False

    # -- one round ---------------------------------------------------------------------
    def round(self) -> dict[str, int]:
        """Hold the lock, then do what is due this round; return what was done."""
        held = self.lock.hold()
        if held != self.leading:
            log.info("feeder: %s the feeder lock", "took" if held else "lost")
            self.leading = held
        if not held:
            return {}
        done: dict[str, int] = {}
        now = self.clock()
        if now >= self._next["leases"]:
            self._next["leases"] = now + LEASE_CHECK_SECONDS
            done["recovered"] = self.recover_dead_leases()
        if now >= self._next["lost"]:
            self._next["lost"] = now + LOST_CHECK_SECONDS
            done["lost"] = self.resend_lost()
        if now >= self._next["sweep"]:
            self._next["sweep"] = now + self.s.sweep_interval_seconds
            done.update({f"swept_{k}": v for k, v in recovery.sweep_stuck_jobs(self.res).items()})
        done.update(self.feed_callbacks())
        done.update(self.feed())
        return done

    def feed_callbacks(self) -> dict[str, int]:
        """Claim the completion callbacks that are due and send one message each to its
        job's lane (whatever the breaker says: a callback calls no one at Tencent)."""
        with write_scope(self.s.database_url) as session:
            claimed = callbacks.claim_due(session, CALLBACKS_PER_ROUND)
        by_lane: dict[str, list[tuple[int, str]]] = {}
        for message, lane, token in claimed:
            by_lane.setdefault(lane, []).append((message, token))
        for lane, items in by_lane.items():
            # Not sent: the claims lapse and the rows are claimed again (CLAIM_SECONDS).
            self.send_callbacks(items, lane)
        return {"callbacks": len(claimed)} if claimed else {}

    def lane_depth(self) -> int:
        """Messages kept in each lane's Redis list: QUEUE_DEPTH, or two seconds of every
        account's budget together."""
        return self.s.queue_depth or max(10, 2 * onboarding.rate(self.s))

    def feed(self) -> dict[str, int]:
        """Top every lane up to its depth from the due rows; return messages sent by lane."""
        # Nothing could be called while every account's breaker holds its calls back: the
        # jobs wait in the database.
        for breaker in self.res.breakers:
            state = breaker.state()
            if not state.open or (state.probe_at or 0) <= self.wall():
                break
        else:
            return {}
        depths = lane_depths(self.res.redis)
        sent: dict[str, int] = {}
        for lane in Lane:
            room = self.lane_depth() - depths[lane.value]
            if room > 0:
                priority = None  # the lane's
                if lane.value == onboarding.LANE and onboarding.shared(self.s):
                    # Sign-ups stored due: their tenants were over their shares.
                    ids, priority = self.pick_by_tenant(room), PRIORITY_ONBOARDING
                else:
                    ids = self.pick(lane.value, room)
                if ids:
                    sent[f"fed_{lane.value}"] = self._send(lane.value, ids, priority)
        return sent

    def pick_by_tenant(self, room: int) -> list[int]:
        """Due sign-ups for the onboarding lane of a deployment of several tenants: as many
        as its bound of sign-ups in flight leaves room for (at most ``room``), shared
        between the tenants with sign-ups due by their weights; within a tenant, in the
        order they became due."""
        with session_scope(self.s.database_url) as session:
            due = onboarding.due_tenants(session)
            if not due:
                return []
            flying = sum(onboarding.in_flight(session).values())
        n = min(room, onboarding.bound(self.s) - flying)
        if n <= 0:
            return []
        weights = onboarding.weights(self.s.database_url)
        keys: dict[Key, float] = {t: weights.get(t, 1.0) for t in due}
        return self._pick_shared(self.fair_tenants, keys, n, _due_of_tenant)

    def pick(self, lane: str, n: int) -> list[int]:
        """Up to ``n`` due jobs of ``lane``, shared between its batches by weight."""
        def due(session: Any, key: Key, count: int, now: Any) -> list[int]:
            got = _due_jobs(session, lane, key, count, now)
            if len(got) < count:
                self._keys.pop(lane, None)  # read the due batches again next time
            return got
        return self._pick_shared(self.fair[lane], dict(self._due_keys(lane)), n, due)

    def _pick_shared(self, fair: FairShare, keys: dict[Key, float], n: int,
                     due: Callable[[Any, Key, int, Any], list[int]]) -> list[int]:
        """Up to ``n`` due jobs, ``due(session, key, count, now)`` of each key, the keys
        sharing them by weight (``fair``)."""
        picked: list[int] = []
        taken: dict[Key, int] = {}
        with session_scope(self.s.database_url) as session:
            now = utcnow()
            for _ in range(3):  # a key that runs dry gives its picks to the others
                alloc = fair.split(n - len(picked), keys)
                if not alloc:
                    break
                for key, count in alloc.items():
                    # Nothing is marked out yet: skip what this round took of the key.
                    skip = taken.get(key, 0)
                    got = due(session, key, skip + count, now)[skip:]
                    taken[key] = skip + len(got)
                    picked += got
                    if len(got) < count:
                        fair.refund(key, count - len(got), keys[key])
                        keys.pop(key)
                if len(picked) >= n or not keys:
                    break
        return picked

    def _due_keys(self, lane: str) -> dict[Key, float]:
        """The batches (None: no batch) with due jobs in ``lane`` that may be fed, by weight."""
        cached = self._keys.get(lane)
        if cached is not None and cached[0] > self.clock():
            return cached[1]
        with session_scope(self.s.database_url) as session:
            keys: dict[Key, float] = {k: w for k, w in
                                      schedule.due_weights(session, lane).items()}
        self._keys[lane] = (self.clock() + KEYS_REFRESH_SECONDS, keys)
        return keys

    def _send(self, lane: str, ids: list[int], priority: int | None = None) -> int:
        with write_scope(self.s.database_url) as session:
            marked = set(schedule.mark_out(session, ids))
        ordered = [i for i in ids if i in marked]
        if not ordered:
            return 0
        try:
            self.send(ordered, lane, priority)
        except Exception:
            # Not sent: due again now (and if this fails too, the lost-message check does it).
            with write_scope(self.s.database_url) as session:
                schedule.due_again(session, ordered)
            raise
        return len(ordered)

    # -- recovery ------------------------------------------------------------------------
    def recover_dead_leases(self) -> int:
        """Make due again every running job whose worker lease is gone; return how many."""
        with session_scope(self.s.database_url) as session:
            held = schedule.running_leases(session)
        # Read even with nothing held: it keeps Redis's epoch, which a lost Redis then lacks.
        dead = leases.dead_leases(self.res.redis, held, self.s.worker_lease_seconds)
        total = 0
        for lease_id in dead or ():
            with write_scope(self.s.database_url) as session:
                ids = schedule.requeue_lease(session, lease_id)
            if ids:
                total += len(ids)
                log.warning("worker lease %s is gone: %d job(s) it held are due again: %s",
                            lease_id, len(ids), ids[:20])
        return total

    def resend_lost(self) -> int:
        """Make due again the jobs whose message is out but in Redis no more."""
        cutoff = utcnow() - LOST_GRACE
        with session_scope(self.s.database_url) as session:
            if not schedule.out_before(session, cutoff, limit=1):
                return 0
        # The broker first, then the database: a job still out afterwards whose message was
        # not in this snapshot was not in Redis when it was taken (it went out seconds ago).
        in_broker = recovery.jobs_in_broker(self.res.redis, [lane.value for lane in Lane],
                                            taken_within=TAKEN_GRACE_SECONDS)
        if in_broker is None:
            return 0  # too many messages out to read now; checked again when fewer are
        with session_scope(self.s.database_url) as session:
            lost = [i for i in schedule.out_before(session, cutoff) if i not in in_broker]
        if not lost:
            return 0
        with write_scope(self.s.database_url) as session:
            count = schedule.due_again(session, lost)
        if count:
            log.warning("feeder: %d job(s) whose message Redis no longer has are due again: "
                        "%s", count, lost[:20])
        return count

    def close(self) -> None:
        if self.leading:
            self.lock.release()
            self.leading = False


def _due_of_tenant(session: Any, tenant: Key, count: int, now: Any) -> list[int]:
    """Up to ``count`` due sign-ups of one tenant, in the order they became due (a job due
    again after a lost lease or message is due as of its creation: before fresher ones)."""
    return list(session.scalars(select(_J.id).where(
        _J.lane == onboarding.LANE, _J.tenant_id == tenant, _J.due_at <= now,
    ).order_by(_J.due_at, _J.id).limit(count)))


def _due_jobs(session: Any, lane: str, key: Key, count: int, now: Any) -> list[int]:
    """Up to ``count`` due jobs of one batch of ``lane``: ones that ran before first."""
    in_key = _J.batch_id.is_(None) if key is None else _J.batch_id == key
    base = select(_J.id).where(_J.lane == lane, in_key, _J.due_at <= now)
    got = list(session.scalars(base.where(_J.started_at.is_not(None))
                               .order_by(_J.due_at, _J.id).limit(count)))
    if len(got) < count:
        got += session.scalars(base.where(_J.started_at.is_(None))
                               .order_by(_J.due_at, _J.id).limit(count - len(got)))
    return got


# This process's feeder candidate: its thread and the event that stops it.
_running: tuple[threading.Thread, threading.Event] | None = None
_guard = threading.Lock()


def _forget_after_fork() -> None:
    # The thread is the parent's; a forked child runs its own candidate when started.
    global _running, _guard
    _running, _guard = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def start(resources_fn: Callable[[], FeederParts]) -> bool:
    """Run a feeder candidate on a daemon thread of this process (once per process)."""
    global _running
    if not ENABLED:
        return False
    with _guard:
        if _running is not None:
            return False
        stop_event = threading.Event()
        thread = threading.Thread(target=_loop, args=(resources_fn, stop_event),
                                  name="feeder", daemon=True)
        _running = (thread, stop_event)
    thread.start()
    return True


def stop(timeout: float = 5.0) -> None:
    """Stop this process's feeder candidate and hand the lock over (a clean shutdown)."""
    global _running
    with _guard:
        running, _running = _running, None
    if running is not None:
        thread, stop_event = running
        stop_event.set()
        thread.join(timeout)


def _loop(resources_fn: Callable[[], FeederParts], stop_event: threading.Event) -> None:
    feeder = Feeder(resources_fn())
    interval = feeder.s.feed_interval_seconds
    try:
        while not stop_event.is_set():
            try:
                feeder.round()
            except Exception as exc:  # noqa: BLE001 - Redis or the database away: again
                log.warning("feeder round failed: %s: %s", type(exc).__name__,
                            str(exc).splitlines()[0][:200] if str(exc) else "")
                stop_event.wait(1.0)
            stop_event.wait(interval)
    finally:
        feeder.close()
