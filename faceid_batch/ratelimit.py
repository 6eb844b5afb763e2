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

Each caller reports its real start (``started_at``: the moment its request's first bytes
were handed to the kernel). Until it has, a slot whose time has passed counts as starting
now, so a thread that wakes late (a busy host) cannot crowd the second after it; a late
start is written back, so the reservations made after it are spaced from when it really
started.
"""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis

# KEYS[1] = reservations zset (score = start time, microseconds of Redis TIME)
# KEYS[2] = set of the members whose caller has reported its start (``started_at``)
# ARGV = limit, window_us, horizon_us (-1 = none), member
_RESERVE = """
local key, started = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now - window)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  for i = 1, #expired, 500 do
    redis.call('SREM', started, unpack(expired, i, math.min(i + 499, #expired)))
  end
end
-- Each reservation's start as far as we know: its slot, or its reported real start; a slot
-- whose time has passed but whose caller has not reported yet may still start any moment
-- (a thread on a busy host wakes late), so it counts as starting now.
local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
local starts = {}
for i = 1, #entries, 2 do
  local s = tonumber(entries[i + 1])
  if s < now and redis.call('SISMEMBER', started, entries[i]) == 0 then s = now end
  starts[#starts + 1] = s
end
table.sort(starts)
local n = #starts
local slot = now
if n > 0 then
  -- Evenly spaced starts: a burst of simultaneous calls would reach the API with jitter and
  -- could crowd a sliding second even though the reservations do not. (Half the spacing let
  -- the schedule catch up after late starts: +1.5 % throughput, but more crowded seconds.)
  local gap = math.floor(window / limit)
  if starts[n] + gap > slot then slot = starts[n] + gap end
end
if n >= limit then
  local kth = starts[n - limit + 1]
  if kth + window > slot then slot = kth + window end
end
if horizon >= 0 and slot - now > horizon then
  return {0, slot - now - horizon}
end
redis.call('ZADD', key, slot, ARGV[4])
local ttl = math.floor((slot - now + window) / 1000) + 1000
redis.call('PEXPIRE', key, ttl)
return {1, slot - now, slot}
"""


# KEYS = reservations, started set; ARGV = member, real start (us, Redis clock), window_us.
# The entry moves later only; one whose slot aged out while its caller was late comes back,
# so that a very late start is still counted.
_MARK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local start = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
if start <= now - window then return 0 end
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not old or tonumber(old) < start then
  redis.call('ZADD', KEYS[1], start, ARGV[1])
end
redis.call('SADD', KEYS[2], ARGV[1])
local ttl = math.floor((start - now + 2 * window) / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""

# KEYS = reservations, started set; ARGV = member. A slot given back unused.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
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
        self.started_key = f"{key}:started"
        self.backfill_horizon_us = int(backfill_horizon * 1_000_000)
        self._script = client.register_script(_RESERVE)
        self._mark = client.register_script(_MARK)
        self._release = client.register_script(_RELEASE)
        self._sleep = sleep
        self._executor: ThreadPoolExecutor | None = None

    def reserve(self, lane: str = "onboarding") -> Grant:
        """Try once to reserve a start; never sleeps."""
        horizon = -1 if lane == "onboarding" else self.backfill_horizon_us
        member = uuid.uuid4().hex
        reply = self._script(keys=[self.key, self.started_key],
                             args=[self.limit, self.window_us, horizon, member])
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
        """Report that the call's first bytes left at ``when`` (``time.monotonic()``); return
        how late that was, in seconds.

        Until it is reported, a slot whose time has passed counts as starting *now* in every
        later reservation (see ``_RESERVE``): a thread can wake late (a busy host, the GIL),
        and its call must not crowd the second after it. A late start is written as
        ``slot + lateness + rtt``: the reply's travel time is unknown but at most the round
        trip, so the start written is never earlier than the real one.
        """
        if not slot.member:
            return 0.0
        late = when - slot.deadline
        start_us = slot.slot_us
        if late > LATE_TOLERANCE:
            start_us += int((late + slot.rtt) * 1_000_000)
        # Written from a helper thread: a Redis round trip here would delay the very call
        # whose start it records.
        self._writer().submit(self._write_start, slot.member, start_us)
        return late

    def release(self, slot: Slot) -> None:
        """Give back a slot that will not be used (the call was called off before sending)."""
        if slot.member:
            try:
                self._release(keys=[self.key, self.started_key], args=[slot.member])
            except redis.RedisError:
                pass  # it ages out after one window

    def _writer(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ratelimit")
        return self._executor

    def _write_start(self, member: str, start_us: int) -> None:
        try:
            self._mark(keys=[self.key, self.started_key], args=[member, start_us, self.window_us])
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
