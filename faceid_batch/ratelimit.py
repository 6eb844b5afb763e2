"""One request budget for every worker on every host, kept in Redis.

The account may start at most ``limit`` calls in any sliding window of one second. Each
caller *reserves* a start time in one atomic Lua script, timed by the Redis server's clock
(``TIME``), never the hosts' clocks:

    t = max(now, last reservation + window/limit, the limit-th latest reservation + window)

so that no window of ``window`` holds more than ``limit`` reserved starts, and starts are
evenly spaced rather than bursts; the caller sleeps until ``t``. One Redis round trip per
call and no polling: waiting never spins Redis.

Lanes share the one budget. A backfill caller may only reserve a slot within ``horizon``
of now; beyond that it is told how long to sleep before asking again. An onboarding
caller reserves whatever the next slot is, so it never queues behind more than a horizon
of backfill reservations, however many backfill jobs are waiting.

A caller that starts late (a busy host) writes its real start back (``started_at``: the
moment its request's first bytes were handed to the kernel), so the reservations made after
it are spaced from when it really started.
"""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis

# KEYS[1] = reservations zset (score = start time, microseconds of Redis TIME)
# ARGV = limit, window_us, horizon_us (-1 = none), member
_RESERVE = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local n = redis.call('ZCARD', key)
local slot = now
if n > 0 then
  -- Evenly spaced starts: a burst of simultaneous calls would reach the API with jitter and
  -- could crowd a sliding second even though the reservations do not. (Half the spacing let
  -- the schedule catch up after late starts: +1.5 % throughput, but more crowded seconds.)
  local gap = math.floor(window / limit)
  local last = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
  if last + gap > slot then slot = last + gap end
end
if n >= limit then
  local kth = tonumber(redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')[2])
  if kth + window > slot then slot = kth + window end
end
if horizon >= 0 and slot - now > horizon then
  return {0, slot - now - horizon}
end
redis.call('ZADD', key, slot, ARGV[4])
redis.call('PEXPIRE', key, math.floor((slot - now + window) / 1000) + 1000)
return {1, slot - now, slot}
"""


# KEYS[1] = reservations; ARGV = member, real start (us, Redis clock). Moves it later only.
_MARK = """
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if old and tonumber(old) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
end
return 1
"""


@dataclass(frozen=True)
class Grant:
    """A reserved start: sleep ``wait`` seconds, then start the call."""

    granted: bool
    wait: float
    slot_us: int = 0  # the reserved start on the Redis clock
    member: str = ""


@dataclass(frozen=True)
class Slot:
    """A granted start: ``deadline`` on this host's monotonic clock."""

    deadline: float
    slot_us: int
    member: str
    # The reservation's round trip: the reply may have spent up to this long on its way, so
    # ``deadline`` can be that much later than ``slot_us`` really is (never earlier).
    rtt: float = 0.0


LATE_TOLERANCE = 0.002  # seconds; later starts are written back to the shared schedule


class RateLimitTimeout(Exception):
    """No slot could be reserved within the caller's deadline."""


class GlobalRateLimiter:
    """Sliding-window limiter shared through Redis by all processes and hosts."""

    def __init__(
        self,
        client: redis.Redis,
        limit: int,
        window: float = 1.0,
        key: str = "faceid:ratelimit",
        backfill_horizon: float = 0.15,
        sleep=time.sleep,  # type: ignore[no-untyped-def]
    ) -> None:
        self.redis = client
        self.limit = limit
        self.window_us = int(window * 1_000_000)
        self.key = key
        self.backfill_horizon_us = int(backfill_horizon * 1_000_000)
        self._script = client.register_script(_RESERVE)
        self._mark = client.register_script(_MARK)
        self._sleep = sleep
        self._executor: ThreadPoolExecutor | None = None

    def reserve(self, lane: str = "onboarding") -> Grant:
        """Try once to reserve a start; never sleeps."""
        horizon = -1 if lane == "onboarding" else self.backfill_horizon_us
        member = uuid.uuid4().hex
        reply = self._script(keys=[self.key], args=[self.limit, self.window_us, horizon, member])
        if not reply[0]:
            return Grant(False, int(reply[1]) / 1_000_000)
        return Grant(True, int(reply[1]) / 1_000_000, int(reply[2]), member)

    def reserve_slot(self, lane: str = "onboarding", timeout: float | None = None) -> Slot:
        """Reserve a start; its ``deadline`` is on ``time.monotonic()`` (may be past).

        Refused backfill callers retry spread over one window, so that a crowd of them does
        not wake together (a herd of wake-ups delays the threads whose slot has come).
        """
        started = time.monotonic()
        while True:
            asked = time.monotonic()
            grant = self.reserve(lane)
            if grant.granted:
                # Counted from the reply, not the request: a slow round trip then makes the
                # start late (harmless) instead of early (which could crowd a second).
                replied = time.monotonic()
                return Slot(replied + grant.wait, grant.slot_us, grant.member, replied - asked)
            pause = grant.wait + random.uniform(0, self.window_us / 1_000_000)
            if timeout is not None and time.monotonic() - started + pause > timeout:
                raise RateLimitTimeout(f"no rate-limit slot within {timeout:.1f}s")
            self._sleep(pause)

    def sleep_until(self, deadline: float) -> None:
        """Sleep until a deadline (``time.monotonic()``)."""
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self._sleep(remaining)

    def mark_started(self, slot: Slot) -> float:
        """Record that the call starts now; return how late that is, in seconds."""
        return self.started_at(slot, time.monotonic())

    def started_at(self, slot: Slot, when: float) -> float:
        """Record that the call's first bytes left at ``when`` (``time.monotonic()``); return
        how late that was, in seconds.

        A thread can wake late (a busy host, the GIL). Moving its entry to the real start
        keeps the reservations made after it honest, so late starts do not crowd a second.
        The start written is ``slot + lateness + rtt``: the reply's travel time is unknown
        but at most the round trip, so the written start is never earlier than the real one.
        """
        late = when - slot.deadline
        if late > LATE_TOLERANCE and slot.member:
            # Written from a helper thread: a Redis round trip here would delay the very
            # call whose start it records. The reservations this start constrains are made
            # a window later (minus the backfill horizon), long after this write lands.
            self._writer().submit(self._write_start, slot.member,
                                  slot.slot_us + int((late + slot.rtt) * 1_000_000))
        return late

    def _writer(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ratelimit")
        return self._executor

    def _write_start(self, member: str, start_us: int) -> None:
        try:
            self._mark(keys=[self.key], args=[member, start_us])
        except redis.RedisError:
            pass  # the slot keeps its reserved time: the margin absorbs one late start

    def acquire(self, lane: str = "onboarding", timeout: float | None = None) -> float:
        """Block until this caller may start a call; return the seconds waited."""
        started = time.monotonic()
        slot = self.reserve_slot(lane, timeout)
        self.sleep_until(slot.deadline)
        self.mark_started(slot)
        return time.monotonic() - started


def max_starts_in_window(starts: list[float], window: float = 1.0) -> int:
    """The largest number of ``starts`` (seconds) in any half-open window [t, t + window)."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while starts[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
