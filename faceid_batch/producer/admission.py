"""Admission control: a lane takes a new HTTP submission only if it can answer it in time.

The budget answers FACEID_RATE_LIMIT calls a second. When a lane's backlog (its jobs queued,
retrying or running) is already more than the budget answers in the lane's wait
(ONBOARDING_MAX_WAIT_SECONDS, BACKFILL_MAX_WAIT_SECONDS), a new submission gets ``429`` and
a ``Retry-After`` instead of joining a queue where its answer would be late.

Refused submissions are given places in line, one budget spacing apart, after the backlog
and after every place already given (kept in Redis, so several API processes share it): a
client that comes back with the same idempotency key at its time is admitted whatever the
backlog then, since the backlog was planned to have room for it exactly then. A crowd
refused together so comes back spread out, one per free slot, instead of all at once.
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
COUNT_CACHE_SECONDS = 0.25

# KEYS = the lane's line (the last place given), this key's place
# ARGV = now, backlog, threshold, spacing, early, ttl
# Returns {1} admitted, or {0, seconds to wait}.
_ADMIT = """
local now = tonumber(ARGV[1])
local backlog = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local spacing = tonumber(ARGV[4])
local place = redis.call('GET', KEYS[2])
if place then
  place = tonumber(place)
  if now >= place - tonumber(ARGV[5]) then
    redis.call('DEL', KEYS[2])
    return {1}
  end
  return {0, tostring(place - now)}
end
local line = tonumber(redis.call('GET', KEYS[1]) or '0')
if backlog < threshold and line <= now then return {1} end
-- After the backlog has drained to the threshold, and after every place already given.
place = now + math.max(backlog + 1 - threshold, 1) * spacing
if line + spacing > place then place = line + spacing end
local ttl = math.ceil(place - now + tonumber(ARGV[6]))
redis.call('SET', KEYS[1], tostring(place), 'EX', ttl)
redis.call('SET', KEYS[2], tostring(place), 'EX', ttl)
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
        backlog = self.backlog(lane, int(threshold * 10) + 1)
        try:
            reply = self._script(
                keys=[LINE_KEY.format(lane=lane), PLACE_KEY.format(lane=lane, key=key)],
                args=[repr(time.time()), backlog, threshold, repr(1.0 / rate), EARLY,
                      int(self.max_wait(lane)) + 60])
        except redis.RedisError:
            # Without Redis no place can be kept: admit on the backlog alone.
            return None if backlog < threshold else max(1.0, (backlog + 1 - threshold) / rate)
        if int(reply[0]) == 1:
            return None
        return float(reply[1])


def retry_after(seconds: float) -> str:
    """The Retry-After value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
