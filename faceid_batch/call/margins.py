"""The learned margin: how much wider than ``1 s + RATE_LIMIT_MARGIN_MS`` an account's
window is kept after the API said that window let too many calls through.

The limiter counts each call from the moment its bytes left; the API counts it when they
reached it. How much later one request reaches the API than another (the jitter of a
network; on a saturated host beside what it calls, the receiving kernel's own delay) is what
the margin beyond one second covers, and no worker can see it (docs/benchmarks.md, "What
the margin covers"). The API can: a plain ``RequestLimitExceeded`` says one of its sliding
seconds, by its own stamps, held more than the account's limit. So each such answer to a
call sent since the last widening widens that account's window: the learned part goes to
``STEP`` the first time, then doubles, to at most ``MAX`` (a few refusals, free and retried,
then none), at most once per ``HOLD``. Each ``RECOVER_EVERY`` seconds after the last widening
takes ``DECAY`` off it until it is gone (from ``MAX``: ten minutes): a host that was busy for
an hour gives the budget back within minutes of it calming down. Refusals that go on at
``MAX`` are not ours to cure (another client on the same SecretId, ``rate_limit`` above the
account's real limit): they are logged as such, once a minute.

Kept in Redis (``faceid:margin:<account>``, on the Redis server's clock), so every worker on
every host uses the same window for one account; each process reads it at most once per
``REFRESH``.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

log = logging.getLogger(__name__)

# The answer the API gives when one SecretId's calls passed its limit in a sliding second.
OWN_LIMIT = "RequestLimitExceeded"
KEY = "faceid:margin:"
STEP = 0.010
MAX = 0.050
# A second widening waits this long: the processes read the margin at most once per
# REFRESH, and the calls reserved on the old window in the meantime may be refused too.
HOLD = 2.0
RECOVER_EVERY = 60.0
DECAY = 0.005
REFRESH = 1.0
# How often refusals at the widest window are logged, per account.
AT_MOST_EVERY = 60.0

# The learned part now: the stored one less one DECAY per RECOVER_EVERY since it was set.
# KEYS[1] = the account's key; ARGV[1], ARGV[2] = decay_us, every_us.
_CURRENT = """
local function current(decay, every, now)
  local raw = redis.call('HMGET', KEYS[1], 'extra', 'at')
  if not raw[1] then return 0 end
  local extra = tonumber(raw[1]) - decay * math.floor((now - tonumber(raw[2])) / every)
  if extra <= 0 then
    redis.call('DEL', KEYS[1])
    return 0
  end
  return extra
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local decay, every = tonumber(ARGV[1]), tonumber(ARGV[2])
local extra = current(decay, every, now)
"""

_READ = _CURRENT + "return extra"

# ARGV = decay_us, every_us, step_us, max_us, hold_us, latency_us (from the refused call's
# send to its answer; -1: unknown). Its send time is reckoned on the Redis server's clock, as
# the widening's is: an answer to a call sent on the old window is the same news again.
_HIT = _CURRENT + """
local widened = tonumber(redis.call('HGET', KEYS[1], 'widened_at') or '0')
if now - widened < tonumber(ARGV[5]) then return extra end
local latency = tonumber(ARGV[6])
if latency >= 0 and now - latency < widened then return extra end
local new = math.min(tonumber(ARGV[4]), math.max(tonumber(ARGV[3]), extra * 2))
redis.call('HSET', KEYS[1], 'extra', new, 'at', now, 'widened_at', now)
redis.call('PEXPIRE', KEYS[1], math.floor(every / 1000) * (math.ceil(new / decay) + 2))
return new
"""


class LearnedMargins:
    """The learned part of each account's window, shared through Redis."""

    def __init__(self, client: redis.Redis, step: float = STEP, most: float = MAX,
                 decay: float = DECAY, recover_every: float = RECOVER_EVERY,
                 hold: float = HOLD) -> None:
        self.redis = client
        self._args = [int(decay * 1_000_000), int(recover_every * 1_000_000)]
        self._widen = [int(step * 1_000_000), int(most * 1_000_000), int(hold * 1_000_000)]
        self._read = client.register_script(_READ)
        self._hit = client.register_script(_HIT)
        self._seen: dict[str, tuple[float, float]] = {}  # account -> (read at, seconds)
        self._most = most
        self._warned: dict[str, float] = {}  # account -> when refusals at MAX were logged
        self._lock = threading.Lock()

    def extra(self, account: str) -> float:
        """The seconds the account's window is widened by now (0: none learned); read from
        Redis at most once per REFRESH per process. A Redis error keeps the last value."""
        seen = self._seen.get(account)
        now = time.monotonic()
        if seen is not None and now - seen[0] < REFRESH:
            return seen[1]
        try:
            value = int(self._read(keys=[KEY + account], args=self._args)) / 1_000_000
        except redis.RedisError:
            value = seen[1] if seen else 0.0
        with self._lock:
            self._seen[account] = (now, value)
        return value

    def hit(self, account: str, latency: float | None = None) -> None:
        """The API refused a call of ``account`` for its own limit: widen its window (once
        per HOLD, and not for a call sent before the last widening). ``latency``: seconds
        from the call's send to its answer (None: unknown). Never raises: it runs between
        an answer and its write."""
        latency_us = -1 if latency is None else max(0, int(latency * 1_000_000))
        before = self._seen.get(account, (0.0, 0.0))[1]
        try:
            value = int(self._hit(keys=[KEY + account],
                                  args=[*self._args, *self._widen, latency_us])) / 1_000_000
        except redis.RedisError as exc:
            log.error("rate-limit margin of %s: could not record %s (%s)", account, OWN_LIMIT,
                      type(exc).__name__)
            return
        with self._lock:
            self._seen[account] = (time.monotonic(), value)
        if value >= self._most and before >= self._most:
            now = time.monotonic()
            if now - self._warned.get(account, -AT_MOST_EVERY) >= AT_MOST_EVERY:
                self._warned[account] = now
                log.warning("rate-limit margin of %s: %s with the window already %.0f ms "
                            "wider: check that rate_limit is the account's real limit and "
                            "that nothing else calls with its SecretId", account, OWN_LIMIT,
                            value * 1000)
        elif value > before:
            log.warning("rate-limit margin of %s: %s; its window is now %.0f ms wider, "
                        "narrowing %.0f ms per %.0f s without another", account, OWN_LIMIT,
                        value * 1000, self._args[0] / 1000, self._args[1] / 1_000_000)
