"""The account breaker: when FaceID says an account cannot call, every worker stops calling
on that account (each account of call/accounts.py has its own breaker; the others go on).

State lives in Redis so that all workers on all hosts see it at once. While it is open, jobs
stay queued (they are re-sent later, not failed). After ``probe_after`` seconds one worker
— whoever takes the probe lock — makes a single real call: if the account answers anything
but an account error, the breaker closes; otherwise it re-opens with a longer delay.

Only the probe's answer moves an open breaker. Calls that were already in flight when it
opened come back afterwards: their successes say nothing about the account now (they passed
its check before it failed), and their account errors are the same news again — counting
them as failed probes would push the next probe out by minutes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

KEY = "faceid:breaker"
PROBE_KEY = "faceid:breaker:probe"


@dataclass(frozen=True)
class BreakerState:
    open: bool
    code: str | None = None
    opened_at: float | None = None
    probe_at: float | None = None
    failures: int = 0

    def describe(self) -> str:
        if not self.open:
            return "closed: calls allowed"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.opened_at or 0))
        wait = max(0.0, (self.probe_at or 0) - time.time())
        return (f"OPEN since {when} UTC after {self.code} ({self.failures} time(s)); "
                f"next probe call in {wait:.0f}s")


class AccountBreaker:
    """Shared breaker; ``before_call`` says whether this worker may call now.

    One instance serves all task threads of a process. Who holds the probe is remembered per
    thread: a caller asks ``before_call`` more than once before it sends (pipeline.py checks
    again after waiting for its rate-limit slot), and ``record`` must know whether the answer
    it reports is the probe's.
    """

    def __init__(self, client: redis.Redis, probe_after: float = 30.0,
                 max_probe_after: float = 600.0, account: str | None = None) -> None:
        self.redis = client
        # One breaker per account (call/accounts.py); None or "default": the one of a
        # single-account deployment, under its own keys.
        self.account = account or "default"
        self.key = KEY if account in (None, "default") else f"{KEY}:account:{account}"
        self.probe_key = f"{self.key}:probe"
        self.probe_after = probe_after
        self.max_probe_after = max_probe_after
        self._local = threading.local()
        self._closed_seen = float("-inf")  # when this process last read a closed state

    def state(self, max_age: float = 0.0) -> BreakerState:
        """The shared state. With ``max_age``, a *closed* state this process read less than
        that many seconds ago will do (an open one is always read again)."""
        if max_age > 0 and time.monotonic() - self._closed_seen < max_age:
            return BreakerState(open=False)
        raw = self.redis.get(self.key)
        if not raw:
            self._closed_seen = time.monotonic()
            return BreakerState(open=False)
        self._closed_seen = float("-inf")
        data = json.loads(raw)
        return BreakerState(open=True, code=data["code"], opened_at=data["opened_at"],
                            probe_at=data["probe_at"], failures=data["failures"])

    def before_call(self, max_age: float = 0.0) -> tuple[bool, float]:
        """(may_call, seconds to wait before asking again). A probe holder may call.
        ``max_age``: see ``state``; the check right before a call must use 0."""
        st = self.state(max_age)
        if not st.open:
            self._local.probe = None
            return True, 0.0
        wait = (st.probe_at or 0) - time.time()
        if wait > 0:
            return False, wait
        mine = getattr(self._local, "probe", None)
        if mine is not None and self.redis.get(self.probe_key) == mine.encode():
            return True, 0.0  # this caller took the probe and is about to send it
        # Only one caller across all workers makes the probe call.
        token = uuid.uuid4().hex
        if self.redis.set(self.probe_key, token, nx=True, ex=max(5, int(self.probe_after))):
            self._local.probe = token
            log.warning("account breaker (%s): probing with one call", self.account)
            return True, 0.0
        return False, min(self.probe_after, 5.0)

    def record(self, account_error: str | None) -> None:
        """Report a call's outcome: an account error code opens, anything else closes.

        Never raises: it runs between a paid answer and its write, and losing the answer
        to a Redis error would pay for the call again. The next answer reports again.
        """
        probe = getattr(self._local, "probe", None) is not None
        self._local.probe = None
        if account_error is None and not probe:
            # Neither opens nor closes it (only the probe's answer closes an open breaker):
            # nothing to read or write. This is nearly every call.
            return
        try:
            self._record(account_error, probe)
        except redis.RedisError as exc:
            log.error("account breaker: could not record %s (%s)",
                      account_error or "a non-account answer", type(exc).__name__)

    def _record(self, account_error: str | None, probe: bool) -> None:
        st = self.state()
        if st.open and not probe:
            # A call that was in flight when the breaker opened: see the module docstring.
            return
        if account_error is None:
            if st.open:
                self.redis.delete(self.key, self.probe_key)
                log.warning("account breaker (%s): closed, calls resume", self.account)
            return
        failures = st.failures + 1 if st.open else 1
        delay = min(self.max_probe_after, self.probe_after * (2 ** (failures - 1)))
        now = time.time()
        self.redis.set(self.key, json.dumps({
            "code": account_error, "opened_at": st.opened_at if st.open else now,
            "probe_at": now + delay, "failures": failures,
        }))
        self.redis.delete(self.probe_key)
        log.error("account breaker (%s): OPEN after %s; every worker stops calling on this "
                  "account; probe in %.0fs", self.account, account_error, delay)

    def close(self) -> None:
        """Operator override: close the breaker now."""
        self.redis.delete(self.key, self.probe_key)
