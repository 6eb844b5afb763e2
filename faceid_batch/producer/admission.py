"""Admission control: a lane takes a new HTTP submission only if it can answer it in time.

The budget answers FACEID_RATE_LIMIT calls a second. Each lane keeps, in Redis (so every API
process shares it), the time its backlog will have been answered: its *line*. A submission
is admitted if, behind the line, it would be answered within the lane's wait
(ONBOARDING_MAX_WAIT_SECONDS, BACKFILL_MAX_WAIT_SECONDS); admitting it moves the line one
budget spacing later. The line is never earlier than the database's backlog says (now +
the lane's jobs not yet answered / the rate), which counts what came another way (the CLI,
a manifest, retries); between two readings of the database, the atomic line counts what
the API admitted.

Only what is admitted moves the line, and only while it may still become a job: a request
that is refused (429) leaves the line where it was, and one that was admitted but then
fails (a body that is not what it says, a preflight refusal, a store that is away) gives
its place back (``release``). A producer sending garbage so costs the others nothing.

Each tenant has its own lines and its backlog is counted alone (the default tenant keeps
the keys of a deployment without tenants): one tenant's flood or backlog never makes
another's submissions wait or be refused.

A refused submission gets ``429`` and a ``Retry-After``: when the line will have room again,
plus up to a second of jitter, so refused clients do not all come back at once.
"""

from __future__ import annotations

import math
import random
import time

import redis
from sqlalchemy import func, select

from faceid_batch.db import session_scope
from faceid_batch.models import DEFAULT_TENANT_ID, Job, JobState, Lane
from faceid_batch.scheduling import onboarding
from faceid_batch.settings import Settings

LINE_KEY = "faceid:admission:{lane}:line"
TENANT_LINE_KEY = "faceid:admission:{lane}:t{tenant}:line"
# What an admitted job takes besides the line before its call starts: its message, the
# claim, staging, the slot's own lateness (bench.api's burst: up to 0.3 s past the line).
PIPELINE = 0.5
COUNT_CACHE_SECONDS = 0.25
SPREAD = 1.0  # seconds of jitter on a Retry-After

# KEYS = the lane's line (when its backlog will have been answered)
# ARGV = now, backlog in the database, spacing (1 / rate), max wait, ttl
# Returns {1} admitted (the line moved one spacing), or {0, seconds until there is room}.
_ADMIT = """
local now = tonumber(ARGV[1])
local spacing = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local line = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = now + tonumber(ARGV[2]) * spacing
if line < floor then line = floor end
line = line + spacing
if line - now > max_wait then
  return {0, tostring(line - max_wait - now)}
end
redis.call('SET', KEYS[1], tostring(line), 'EX', tonumber(ARGV[5]) + math.ceil(line - now))
return {1}
"""
# KEYS = the lane's line; ARGV = now, spacing. An admitted request that stored nothing.
_RELEASE = """
local line = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = line - tonumber(ARGV[2])
if back <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], tostring(back), 'KEEPTTL')
end
return 1
"""


class Admission:
    """Decides, per lane, whether a new submission joins the queue now."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)
        self._counts: dict[tuple[str, int], tuple[float, int]] = {}

    def max_wait(self, lane: str) -> float:
        s = self.settings
        return (s.onboarding_max_wait_seconds if lane == Lane.ONBOARDING.value
                else s.backfill_max_wait_seconds)

    def backlog(self, lane: str, cap: int, tenant: int = DEFAULT_TENANT_ID) -> int:
        """The tenant's jobs of the lane not yet answered, counted up to ``cap`` (cached a
        moment)."""
        cached = self._counts.get((lane, tenant))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        waiting = (*JobState.waiting(), JobState.RUNNING)
        with session_scope(self.settings.database_url) as session:
            inner = select(Job.id).where(Job.lane == lane, Job.state.in_(waiting),
                                         Job.tenant_id == tenant).limit(cap)
            count = session.scalar(select(func.count()).select_from(inner.subquery())) or 0
        self._counts[(lane, tenant)] = (time.monotonic() + COUNT_CACHE_SECONDS, count)
        return count

    def rate(self) -> int:
        """The calls a second the line drains at: every account's budget together (the
        accounts file, or FACEID_RATE_LIMIT of the one account)."""
        return onboarding.rate(self.settings)

    def check(self, lane: str, tenant: int = DEFAULT_TENANT_ID) -> float | None:
        """None if a new submission is admitted (it holds a place in the line until it is
        stored or ``release``d), else the seconds to wait (Retry-After)."""
        rate = self.rate()
        threshold = rate * self.max_wait(lane)
        # Counted up to ten waits' worth: beyond that the line says more than the count.
        backlog = self.backlog(lane, int(threshold * 10) + 1, tenant)
        try:
            reply = self._admit(
                keys=[line_key(lane, tenant)],
                args=[repr(time.time()), backlog, repr(1.0 / rate),
                      max(0.0, self.max_wait(lane) - PIPELINE), 60])
        except redis.RedisError:
            # Without Redis the line cannot be kept: admit on the backlog alone.
            return None if backlog < threshold else max(1.0, (backlog + 1 - threshold) / rate)
        if int(reply[0]) == 1:
            return None
        return float(reply[1]) + random.uniform(0, SPREAD)

    def release(self, lane: str, tenant: int = DEFAULT_TENANT_ID) -> None:
        """Give back the place of an admitted submission that stored no job."""
        try:
            self._release(keys=[line_key(lane, tenant)],
                          args=[repr(time.time()), repr(1.0 / self.rate())])
        except redis.RedisError:
            pass  # no line is kept without Redis


def line_key(lane: str, tenant: int) -> str:
    """The Redis key of a tenant's line in a lane."""
    return LINE_KEY.format(lane=lane) if tenant == DEFAULT_TENANT_ID \
        else TENANT_LINE_KEY.format(lane=lane, tenant=tenant)


def retry_after(seconds: float) -> str:
    """The Retry-After value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
