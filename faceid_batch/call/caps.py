"""The learned account-wide cap: what one Tencent account (its CAM sub-users together) may
call, beside each SecretId's own published limit.

Tencent answers ``RequestLimitExceeded.UinLimitExceeded`` or
``RequestLimitExceeded.GlobalRegionUinLimitExceeded`` when the calls of all the SecretIds of
one account together exceed a limit it does not publish. Such an answer cuts the owner's
budget (the sum of its accounts' ``rate_limit``) to ``CUT`` of what it was, at most once per
``HOLD`` seconds; an answer to a call sent before the last cut is the same news again (it
left while the old budget ran) and cuts nothing, however late it comes. Each ``RECOVER_EVERY``
seconds without another one gives back ``STEP`` of the full budget, until it is whole and the
cap is gone. The cap is kept in Redis (``faceid:cap:<owner>``, on the Redis server's clock),
so every worker on every host shares it; each account then runs at its share of it
(``share``), so their windows together never hold more than the cap.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

log = logging.getLogger(__name__)

ACCOUNT_WIDE = frozenset({"RequestLimitExceeded.UinLimitExceeded",
                          "RequestLimitExceeded.GlobalRegionUinLimitExceeded"})
KEY = "faceid:cap:"
CUT = 0.7
# A second cut waits this long: the processes read the cap at most once per REFRESH, so the
# calls of the next second may still run at the budget before the cut.
HOLD = 2.0
RECOVER_EVERY = 60.0
STEP = 0.05
# How long a process uses the cap it read before reading it again.
REFRESH = 1.0

# The cap now: the stored one plus one step per RECOVER_EVERY since it was set; gone once
# whole. KEYS[1] = the owner's key; ARGV = full, step, every_us.
_CURRENT = """
local function current(full, step, every, now)
  local raw = redis.call('HMGET', KEYS[1], 'cap', 'at')
  if not raw[1] then return full, nil end
  local at = tonumber(raw[2])
  local cap = tonumber(raw[1]) + step * math.floor((now - at) / every)
  if cap >= full then
    redis.call('DEL', KEYS[1])
    return full, nil
  end
  return cap, at
end
"""

_READ = _CURRENT + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cap = current(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), now)
return cap
"""

# ARGV = full, step, every_us, cut (per mille), hold_us, latency_us (how long the hit call
# took from its send to its answer; -1: unknown). Its send time is taken on the Redis
# server's clock, the one cut_at is on: now - latency (a little after the true send, by the
# moments between the answer and this script, so at worst a late answer counts as news).
# Returns the cap after the hit.
_HIT = _CURRENT + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local full, step, every = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cap, at = current(full, step, every, now)
local set_at = tonumber(redis.call('HGET', KEYS[1], 'cut_at') or '0')
if now - set_at < tonumber(ARGV[5]) then return cap end
local latency = tonumber(ARGV[6])
if latency >= 0 and now - latency < set_at then return cap end
local new = math.floor(cap * tonumber(ARGV[4]) / 1000)
if new < 1 then new = 1 end
redis.call('HSET', KEYS[1], 'cap', new, 'at', now, 'cut_at', now)
redis.call('PEXPIRE', KEYS[1], math.floor(every / 1000) * (math.ceil(full / step) + 2))
return new
"""


class OwnerCaps:
    """The learned caps of the owners (Tencent accounts) of this process's accounts."""

    def __init__(self, client: redis.Redis, budgets: dict[str, int]) -> None:
        """``budgets``: each owner's full budget, the sum of its accounts' rate limits."""
        self.redis = client
        self.budgets = dict(budgets)
        self._read = client.register_script(_READ)
        self._hit = client.register_script(_HIT)
        self._seen: dict[str, tuple[float, int]] = {}  # owner -> (read at, cap)
        self._lock = threading.Lock()

    def _args(self, owner: str) -> list[int]:
        full = self.budgets[owner]
        return [full, max(1, round(full * STEP)), int(RECOVER_EVERY * 1_000_000)]

    def cap(self, owner: str) -> int:
        """The owner's budget now (its full budget when no cap was learned); read from Redis
        at most once per REFRESH per process. A Redis error keeps the last value read."""
        seen = self._seen.get(owner)
        now = time.monotonic()
        if seen is not None and now - seen[0] < REFRESH:
            return seen[1]
        try:
            value = int(self._read(keys=[KEY + owner], args=self._args(owner)))
        except redis.RedisError:
            value = seen[1] if seen else self.budgets[owner]
        with self._lock:
            self._seen[owner] = (now, value)
        return value

    def share(self, owner: str, rate_limit: int) -> int:
        """An account's budget under its owner's cap: its share in proportion to its
        rate limit (at least 1)."""
        full = self.budgets[owner]
        cap = self.cap(owner)
        if cap >= full:
            return rate_limit
        return max(1, rate_limit * cap // full)

    def hit(self, owner: str, code: str, latency: float | None = None) -> None:
        """An account-wide RequestLimitExceeded from one of the owner's accounts: cut its
        cap (once per HOLD, and not for a call sent before the last cut). ``latency``: the
        seconds from the call's send to its answer (None: unknown); the send time is
        reckoned from it on the Redis server's clock, as the cut's time is, so no host's
        clock is compared with Redis's. Never raises: it runs between an answer and its
        write."""
        latency_us = -1 if latency is None else max(0, int(latency * 1_000_000))
        try:
            value = int(self._hit(keys=[KEY + owner], args=[
                *self._args(owner), int(CUT * 1000), int(HOLD * 1_000_000), latency_us]))
        except redis.RedisError as exc:
            log.error("account cap of %s: could not record %s (%s)", owner, code,
                      type(exc).__name__)
            return
        with self._lock:
            self._seen[owner] = (time.monotonic(), value)
        log.warning("account cap of %s: %s; its accounts share %d calls/s (of %d) and "
                    "recover %d per %.0f s", owner, code, value, self.budgets[owner],
                    max(1, round(self.budgets[owner] * STEP)), RECOVER_EVERY)
