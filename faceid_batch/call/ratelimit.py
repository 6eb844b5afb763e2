"""One request budget for every worker on every host, kept in Redis.

The account may start at most ``limit`` calls in any sliding window of one second. Each
caller *reserves* a start time in one atomic Lua script, timed by the Redis server's clock
(``TIME``), never the hosts' clocks:

    t = max(now, last reservation + min_gap, the limit-th latest possible start + window)

so that no window of ``window`` can hold more than ``limit`` starts; the caller sleeps until
``t``. One Redis round trip per call and no polling: waiting never spins Redis.

The pace is set by the window rule alone. Each of the ``limit`` latest starts frees one
place a window after it *really* started, so a call that left 10 ms late delays the one
start a window after it by 10 ms, and nothing else (spacing every start a full
``window / limit`` after the previous one would carry every late start into every later
slot). ``min_gap`` (half that spacing by default) only keeps starts from bunching.

What the window's part beyond one second (``RATE_LIMIT_MARGIN_MS``) covers is therefore not
how late calls leave (each is counted at its real start) but what no caller can see: how
much later after its write one request reaches the API than another. On a saturated host
that includes the kernel's own delay in passing the bytes on: at 20/s on two saturated cores
the simulator's kernel stamped requests up to 6.3 ms after their write had returned
(docs/benchmarks.md, "What the margin covers").

Each caller reports its real start (``started_at``: the moment its request's first bytes
were handed to the kernel). Until it has, its reservation counts as starting as late as it
still may: its slot plus ``LATE_BOUND`` (a caller past ``STALE_AFTER`` reserves again instead
of sending, see ``call`` and ``FaceIDClient.send(send_by=...)``). So a window is never
judged on a start that could still move into it.

Lanes share the one budget. A backfill caller may only reserve a slot within ``horizon``
of now; beyond that it is told how long to sleep before asking again. An onboarding caller
has a longer horizon (``ONBOARDING_HORIZON`` in the workers), so it never queues behind
more than a backfill horizon of backfill reservations, however many backfill jobs are
waiting. Refused callers are told to come back one spacing apart, in the order they were
refused (a queue kept as one timestamp per lane), so each comes back about when a slot is
free for it: a crowd of them told the same time would ask again together, and all but one
would be refused again (measured: 3.7 refused asks per job with 80 waiting threads; each is
a round trip and a script run).

A sign-up (``line``: its tenant) whose tenant has no other sign-up waiting in the onboarding
line and none holding a slot ahead passes that line: it takes the next slot up to twice the
horizon ahead. So one tenant's burst of sign-ups does not hold another tenant's single one
behind it; each tenant passes at most once per slot it holds, and the callers in line keep
one chain of come-back times whatever their tenant (a chain per tenant would send the heads
of every tenant's line back at the same moment, to race each other for one slot).

Why onboarding has a horizon at all: a slot reserved far ahead is unreported when the next
ones are computed, so it counts at its slot + LATE_BOUND, and a queue of such reservations
is paced at limit per (window + LATE_BOUND). With onboarding reserving whatever the next
slot was, 80 threads of onboarding jobs (a sign-up burst) reached 13.3 calls/s of 20. Within
the horizon, the start a window before a new slot has happened and reported.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import redis

# KEYS[1] = reservations zset (score = start time, microseconds of Redis TIME: the slot, or
#           the caller's reported real start once it has reported)
# KEYS[2] = set of the members whose caller has reported its start (``started_at``)
# KEYS[3] = when the last refused caller of this lane was told to come back (Redis time, us):
#           the lane's one line
# KEYS[4] = the latest slot a caller of this caller's tenant holds (Redis time, us; gone
#           once it passed), and KEYS[5] = when the last refused caller of its tenant was
#           told to come back; both used only when ``reach`` is beyond the horizon
# ARGV = limit, window_us, horizon_us (-1 = none), member, late_bound_us, min_gap_us,
#        in_line (1: a caller refused before, back at the time it was told; 2: a sign-up that
#        was passing the line, back at the time it was told),
#        reach_us (how far ahead the one sign-up of a tenant with none waiting or ahead may
#        reserve, passing the line)
_RESERVE = """
local key, started = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local spacing = math.floor(window / limit)  -- the spacing of a steady stream at the limit
local horizon = tonumber(ARGV[3])
local late = tonumber(ARGV[5])
local min_gap = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- Each reservation's latest possible start: its reported real start, or, until its caller
-- has reported, its slot plus ``late`` (a caller does not send more than that after its
-- slot; a thread that wakes later reserves again). One whose latest start is more than a
-- window old no longer counts.
local entries = redis.call('ZRANGEBYSCORE', key, '-inf', now - window, 'WITHSCORES')
for i = 1, #entries, 2 do
  local reported = redis.call('SISMEMBER', started, entries[i]) == 1
  if reported or tonumber(entries[i + 1]) + late <= now - window then
    redis.call('ZREM', key, entries[i])
    redis.call('SREM', started, entries[i])
  end
end
entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
local latest = {}
local last = nil
for i = 1, #entries, 2 do
  local s = tonumber(entries[i + 1])
  if not last or s > last then last = s end
  if redis.call('SISMEMBER', started, entries[i]) == 0 then s = s + late end
  latest[#latest + 1] = s
end
local slot = now
-- No burst: a start at least ``min_gap`` after the last one planned.
if last and last + min_gap > slot then slot = last + min_gap end
-- No window holds more than ``limit`` starts: the new one comes a window after the
-- limit-th latest possible start. Only this rule sets the pace, so a start that went late
-- delays one later start, not every one after it.
local n = #latest
if n >= limit then
  table.sort(latest)
  local kth = latest[n - limit + 1]
  if kth + window > slot then slot = kth + window end
end
if horizon >= 0 then
  local line = tonumber(redis.call('GET', KEYS[3]) or '0')
  local back_again = tonumber(ARGV[7])
  local in_line = back_again == 1
  local reach = tonumber(ARGV[8])
  local tenants = reach > horizon
  if in_line and slot - now > horizon then
    -- Back for its turn, but the slot is not near yet: it keeps its place.
    return {0, slot - horizon - now}
  end
  -- A newcomer does not pass the callers waiting in line (one may still be on its way back,
  -- up to a spacing late): it joins the end of it. Except the sign-up of a tenant with none
  -- waiting and none holding a slot ahead: it takes the next slot within ``reach``, so one
  -- tenant's burst does not hold another's single sign-up behind it. Each tenant passes at
  -- most once per slot it holds; the line keeps one chain of come-back times for everyone.
  local jump = tenants and back_again == 2
  if tenants and back_again == 0 then
    jump = tonumber(redis.call('GET', KEYS[5]) or '0') + spacing <= now
      and tonumber(redis.call('GET', KEYS[4]) or '0') <= now
  end
  if jump and slot - now > reach then
    -- Passing the line, but the next slot is beyond its reach: it comes back for it (its
    -- tenant's other sign-ups meanwhile join the line).
    local back = slot - reach
    redis.call('SET', KEYS[5], back, 'PX', math.floor((back - now) / 1000) + 1000)
    return {0, back - now, 1}
  end
  local waiting = not in_line and not jump and line + spacing > now
  local within = horizon
  if jump then within = reach end
  if slot - now > within or waiting then
    -- Come back when the next slot is within the horizon, but one spacing after the caller
    -- refused before: the refused wait in line instead of all asking again at once.
    local back = slot - horizon
    if line + spacing > back then back = line + spacing end
    local px = math.floor((back - now) / 1000) + 1000
    redis.call('SET', KEYS[3], back, 'PX', px)
    if tenants then redis.call('SET', KEYS[5], back, 'PX', px) end
    return {0, back - now}
  end
  if tenants and slot > now then
    local held = tonumber(redis.call('GET', KEYS[4]) or '0')
    if slot > held then
      redis.call('SET', KEYS[4], slot, 'PX', math.floor((slot - now) / 1000) + 1)
    end
  end
end
redis.call('ZADD', key, slot, ARGV[4])
local ttl = math.floor((slot - now + window + late) / 1000) + 1000
redis.call('PEXPIRE', key, ttl)
redis.call('PEXPIRE', started, ttl)
return {1, slot - now, slot, now}
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
    redis_now_us: int = 0  # the Redis clock when the script ran
    passing: bool = False  # refused, a sign-up passing the line: back for its slot then


@dataclass(frozen=True)
class Slot:
    """A granted start: ``deadline`` on this host's monotonic clock."""

    deadline: float
    slot_us: int
    member: str
    rtt: float = 0.0  # the reservation's round trip


class RedisClock:
    """This host's ``time.monotonic()`` mapped onto the Redis server's clock.

    Every reservation is a clock sample: Redis read its TIME somewhere between our request
    and its reply, so the offset is known to within half that round trip. The sample with
    the shortest round trip wins; one older than ``REFRESH`` seconds gives way to the next,
    so drift cannot pile up. A thread that waits for the GIL before it reads the reply only
    widens its own sample, which then loses; mapping through the reply time instead would
    carry that wait into every start it computes.
    """

    REFRESH = 30.0

    def __init__(self) -> None:
        self._best: tuple[float, float, float] | None = None  # offset µs, half rtt µs, when

    def sample(self, asked: float, replied: float, redis_now_us: int) -> None:
        half = (replied - asked) * 500_000
        offset = redis_now_us - (asked + replied) * 500_000
        best = self._best
        if best is None or half <= best[1] or replied - best[2] > self.REFRESH:
            self._best = (offset, half, replied)  # one tuple: threads read a consistent one

    def local_deadline(self, redis_us: int) -> float:
        """The earliest local time that is surely not before ``redis_us`` on Redis's clock."""
        offset, half, _ = self._best or (0.0, 0.0, 0.0)
        return (redis_us - offset + half) / 1_000_000

    def redis_time(self, local: float) -> int:
        """The latest Redis time that local time ``local`` can be (a start never reported
        earlier than it was)."""
        offset, half, _ = self._best or (0.0, 0.0, 0.0)
        return int(local * 1_000_000 + offset + half) + 1


# A caller that wakes this much after its slot reserves again instead of sending on it.
STALE_AFTER = 0.25
# The latest a call can start after its slot, as far as the budget counts it until its caller
# reports: STALE_AFTER, plus what a thread may lose between that check and its write (the
# GIL on a saturated host: up to hundreds of ms were measured between waking and writing).
LATE_BOUND = STALE_AFTER + 0.25
# Starts are at least this share of the steady spacing (window / limit) apart: no bursts,
# while the pace is set by the window alone (see _RESERVE).
MIN_SPACING = 0.5
# How far ahead an onboarding caller of the workers reserves: longer than the backfill
# horizon (priority), and well under the window, so the start a window before a new slot
# has reported (see the module docstring). A sign-up passing the line (its tenant has none
# waiting or ahead) waits for at most twice this: the slots others reserved ahead of it.
ONBOARDING_HORIZON = 0.25


# What a call does before its slot (check the breaker, sign): this long before it.
PREPARE_AHEAD = 0.05


class SendTooLate(Exception):
    """Nothing was sent: the request would have left after its ``send_by`` time."""


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Send(Protocol[T_co]):
    """How a caller of ``GlobalRateLimiter.call`` sends: its first byte leaves no earlier
    than ``send_at`` (``time.monotonic()``), or it raises SendTooLate, sending nothing, if
    that would be after ``send_by``; it calls ``on_sent`` with the time its first bytes
    left (not at all if nothing left)."""

    def __call__(self, send_at: float, send_by: float,
                 on_sent: Callable[[float], None]) -> T_co: ...


@dataclass(frozen=True)
class Sent(Generic[T]):
    """A call made on a slot: what ``send`` returned, and how it went against the slot."""

    result: T
    waited: float  # seconds from asking for a slot to the (first) slot
    late: float | None  # seconds after its slot the first bytes left; None: nothing left
    resent: int = 0  # slots given back because the thread got to the write too late


class GlobalRateLimiter:
    """Sliding-window limiter shared through Redis by all processes and hosts."""

    def __init__(
        self,
        client: redis.Redis,
        limit: int,
        window: float = 1.0,
        key: str = "faceid:ratelimit",
        backfill_horizon: float = 0.15,
        onboarding_horizon: float | None = None,
        min_spacing: float = MIN_SPACING,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.redis = client
        self.limit = limit
        self.window_us = self.base_window_us = int(window * 1_000_000)
        self.key = key
        self.started_key = f"{key}:started"
        self.queue_key = f"{key}:backfill-queue"
        self.onboarding_queue_key = f"{key}:onboarding-queue"
        self.backfill_horizon_us = int(backfill_horizon * 1_000_000)
        # None: no horizon, an onboarding caller takes whatever the next slot is.
        self.onboarding_horizon_us = (-1 if onboarding_horizon is None
                                      else int(onboarding_horizon * 1_000_000))
        self.min_spacing = min_spacing
        self.min_gap_us = int(self.window_us / limit * min_spacing)
        self._script = client.register_script(_RESERVE)
        self._mark = client.register_script(_MARK)
        self._release = client.register_script(_RELEASE)
        self._sleep = sleep
        self._executor: ThreadPoolExecutor | None = None
        self.clock = RedisClock()

    def set_limit(self, limit: int) -> None:
        """Change the budget (a learned account-wide cap, call/caps.py); the next
        reservation uses it."""
        limit = max(1, int(limit))
        if limit != self.limit:
            self.min_gap_us = int(self.window_us / limit * self.min_spacing)
            self.limit = limit

    def set_extra_margin(self, seconds: float) -> None:
        """Widen the window by ``seconds`` beyond the one it was built with (a margin the
        API's refusals taught, call/margins.py); the next reservation uses it."""
        window_us = self.base_window_us + max(0, int(seconds * 1_000_000))
        if window_us != self.window_us:
            self.window_us = window_us
            self.min_gap_us = int(window_us / self.limit * self.min_spacing)

    def reserve(self, lane: str = "onboarding", in_line: int = 0,
                line: str = "") -> Grant:
        """Try once to reserve a start; never sleeps. ``in_line``: this caller was refused
        before and comes back when it was told (1: it is not sent to the end of the line;
        2: it was passing the line, ``Grant.passing``, and still is).
        ``line``: an onboarding caller's tenant, whose one sign-up may pass the line (see
        the module docstring); callers of a lane wait in one line."""
        if lane == "onboarding":
            horizon = reach = self.onboarding_horizon_us
            queue = tenant = self.onboarding_queue_key
            if line and horizon >= 0:
                tenant, reach = f"{queue}:{line}", 2 * horizon
        else:
            horizon = reach = self.backfill_horizon_us
            queue = tenant = self.queue_key
        member = uuid.uuid4().hex
        reply = self._script(keys=[self.key, self.started_key, queue, f"{tenant}:ahead",
                                   f"{tenant}:back"],
                             args=[self.limit, self.window_us, horizon, member,
                                   int(LATE_BOUND * 1_000_000), self.min_gap_us,
                                   int(in_line), reach])
        if not reply[0]:
            return Grant(False, int(reply[1]) / 1_000_000, passing=len(reply) > 2)
        return Grant(True, int(reply[1]) / 1_000_000, int(reply[2]), member, int(reply[3]))

    def reserve_slot(self, lane: str = "onboarding", line: str = "") -> Slot:
        """Reserve a start; its ``deadline`` is on ``time.monotonic()`` (may be past).

        A refused caller comes back when the script says (its place in line), with up to
        one spacing of jitter, and keeps that place: callers of a line are served in the
        order they first asked (but for the sign-ups that pass it, see ``reserve``).
        """
        spacing = self.window_us / 1_000_000 / self.limit
        in_line = 0
        while True:
            asked = time.monotonic()
            grant = self.reserve(lane, in_line, line)
            in_line = 2 if grant.passing else 1
            if grant.granted:
                replied = time.monotonic()
                self.clock.sample(asked, replied, grant.redis_now_us)
                return Slot(self.clock.local_deadline(grant.slot_us), grant.slot_us,
                            grant.member, replied - asked)
            self._sleep(grant.wait + random.uniform(0, spacing))

    def sleep_until(self, deadline: float) -> None:
        """Sleep until a deadline (``time.monotonic()``)."""
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self._sleep(remaining)

    def call(self, lane: str, send: Send[T], ready: Callable[[], bool] | None = None,
             on_too_late: Callable[[], None] | None = None,
             line: str = "") -> Sent[T] | None:
        """Make one call within the budget: reserve a start for ``lane``, sleep until just
        before it (PREPARE_AHEAD), ask ``ready()`` (False calls it off: the slot is given
        back, None is returned), then ``send`` on it (see Send). A thread that gets to the
        write more than STALE_AFTER after its slot (a host that stalled it) sends nothing:
        the slot goes back (``on_too_late``) and the call waits for a new one. The real
        start is reported; a slot nothing left on is given back.

        ``line``: the onboarding caller's tenant, see ``reserve``. This is the one way calls
        are made, by the workers and by the tests alike.
        """
        asked = time.monotonic()
        slot = self.reserve_slot(lane, line)
        waited = max(0.0, slot.deadline - asked)  # in line too, not only from the grant
        # Everything but the send happens before the reserved start, so the call leaves on
        # time (late starts bunch up at the API and can exceed its limit in a second).
        self.sleep_until(slot.deadline - PREPARE_AHEAD)
        if ready is not None and not ready():
            self.release(slot)
            return None
        resent = 0
        late: list[float] = []  # a SendTooLate sent nothing: it stays empty until a send
        while True:
            def report(when: float, on: Slot = slot) -> None:
                late.append(self.started_at(on, when))

            try:
                result = send(slot.deadline, slot.deadline + STALE_AFTER, report)
                break
            except SendTooLate:
                self.release(slot)
                resent += 1
                if on_too_late is not None:
                    on_too_late()
                slot = self.reserve_slot(lane, line)
                # As for the first slot: no pooled connection is held longer than this.
                self.sleep_until(slot.deadline - PREPARE_AHEAD)
        if not late:
            self.release(slot)  # nothing left (no connection): the slot is unused
        return Sent(result, waited, late[0] if late else None, resent)

    def started_at(self, slot: Slot, when: float) -> float:
        """Report that the call's first bytes left at ``when`` (``time.monotonic()``); return
        how late that was, in seconds.

        Until it is reported, a slot counts as starting at its time plus ``LATE_BOUND`` in
        every later reservation (see ``_RESERVE``): a thread can wake late (a busy host, the
        GIL), and its call must not crowd the second after it. The start is written on the Redis
        clock (``RedisClock.redis_time``: never earlier than it really was) and moves the
        entry later only.
        """
        if not slot.member:
            return 0.0
        # Written from a helper thread: a Redis round trip here would delay the very call
        # whose start it records.
        self._writer().submit(self._write_start, slot.member, self.clock.redis_time(when))
        return when - slot.deadline

    def release(self, slot: Slot) -> None:
        """Give back a slot that will not be used (the call was called off before sending)."""
        if slot.member:
            try:
                self._release(keys=[self.key, self.started_key], args=[slot.member])
            except redis.RedisError:
                pass  # it ages out after one window

    def flush(self, timeout: float = 5.0) -> None:
        """Return once the start times handed to the background writer are in Redis (a
        clean shutdown leaves none behind)."""
        self._writer().submit(lambda: None).result(timeout=timeout)

    def _writer(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ratelimit")
        return self._executor

    def _write_start(self, member: str, start_us: int) -> None:
        try:
            self._mark(keys=[self.key, self.started_key], args=[member, start_us, self.window_us])
        except redis.RedisError:
            pass  # unreported, the slot counts at its time + LATE_BOUND until it ages out


def max_starts_in_window(starts: list[float], window: float = 1.0) -> int:
    """The largest number of ``starts`` (seconds) in any half-open window [t, t + window)."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while starts[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
