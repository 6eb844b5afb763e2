"""Admission control: a lane takes a new HTTP submission only if it can answer it in time.

The budget answers FACEID_RATE_LIMIT calls a second. Each lane keeps, in Redis (so every API
process shares it), the time its backlog will have been answered: its *line*. A submission
is admitted if, behind the line, it would be answered within the lane's wait
(ONBOARDING_MAX_WAIT_SECONDS, BACKFILL_MAX_WAIT_SECONDS); admitting it moves the line one
budget spacing later. The line is never earlier than the database's backlog says (now +
the lane's jobs not yet answered / the rate), which counts what came another way (the CLI,
a manifest, retries); between two readings of the database, the atomic line counts what
the API admitted.

A submission that would be answered too late gets ``429`` and a ``Retry-After`` that is a
place in line: its slot is taken at the end of the line now, and a client back at that
time with the same idempotency key is admitted at once (its slot was kept for it). Refused
clients so come back spread one spacing apart, each when its answer fits in the wait again,
instead of all at once.
"""

from __future__ import annotations

import math
import time

import redis
from sqlalchemy import func, select

from faceid_batch.db import session_scope
from faceid_batch.models import Job, JobState, Lane
from faceid_batch.settings import Settings

LINE_KEY = "faceid:admission:{lane}:line"
PLACE_KEY = "faceid:admission:{lane}:place:{key}"
EARLY = 0.5  # a client back this much before its place is let in (clocks and rounding)
# What an admitted job takes besides the line before its call starts: its message, the
# claim, staging, the slot's own lateness (bench.api's burst: up to 0.3 s past the line).
PIPELINE = 0.5
COUNT_CACHE_SECONDS = 0.25

# KEYS = the lane's line (when its backlog will have been answered), this key's place
# ARGV = now, backlog in the database, spacing (1 / rate), max wait, early, ttl
# Returns {1} admitted, or {0, seconds to wait}.
_ADMIT = """
local now = tonumber(ARGV[1])
local spacing = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local ttl = tonumber(ARGV[6])
local place = redis.call('GET', KEYS[2])
if place then
  place = tonumber(place)
  if now >= place - tonumber(ARGV[5]) then
    redis.call('DEL', KEYS[2])
    return {1}  -- its slot in the line was taken when it was refused
  end
  return {0, tostring(place - now)}
end
local line = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = now + tonumber(ARGV[2]) * spacing
if line < floor then line = floor end
line = line + spacing
redis.call('SET', KEYS[1], tostring(line), 'EX', ttl + math.ceil(line - now))
if line - now <= max_wait then return {1} end
-- Its slot is the new end of the line; it may come when that is within the wait.
place = line - max_wait
redis.call('SET', KEYS[2], tostring(place), 'EX', ttl + math.ceil(place - now))
return {0, tostring(place - now)}
"""


class Admission:
    """Decides, per lane, whether a new submission joins the queue now."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self._script = client.register_script(_ADMIT)
        self._counts: dict[str, tuple[float, int]] = {}

    def max_wait(self, lane: str) -> float:
        s = self.settings
        return (s.onboarding_max_wait_seconds if lane == Lane.ONBOARDING.value
                else s.backfill_max_wait_seconds)

    def backlog(self, lane: str, cap: int) -> int:
        """The lane's jobs not yet answered, counted up to ``cap`` (cached a moment)."""
        cached = self._counts.get(lane)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        waiting = (*JobState.waiting(), JobState.RUNNING.value)
        with session_scope(self.settings.database_url) as session:
            inner = select(Job.id).where(Job.lane == lane, Job.state.in_(waiting)).limit(cap)
            count = session.scalar(select(func.count()).select_from(inner.subquery())) or 0
        self._counts[lane] = (time.monotonic() + COUNT_CACHE_SECONDS, count)
        return count

    def check(self, lane: str, key: str) -> float | None:
        """None if the submission is admitted, else the seconds to wait (Retry-After)."""
        rate = self.settings.faceid_rate_limit
        threshold = rate * self.max_wait(lane)
        # Counted up to ten waits' worth: beyond that the line says more than the count.
        backlog = self.backlog(lane, int(threshold * 10) + 1)
        try:
            reply = self._script(
                keys=[LINE_KEY.format(lane=lane), PLACE_KEY.format(lane=lane, key=key)],
                args=[repr(time.time()), backlog, repr(1.0 / rate),
                      max(0.0, self.max_wait(lane) - PIPELINE), EARLY, 60])
        except redis.RedisError:
            # Without Redis no place can be kept: admit on the backlog alone.
            return None if backlog < threshold else max(1.0, (backlog + 1 - threshold) / rate)
        if int(reply[0]) == 1:
            return None
        return float(reply[1])


def retry_after(seconds: float) -> str:
    """The Retry-After value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
