"""Which account calls for a job: one that serves its region, whose breaker lets it call,
with the fewest of this process's calls on it for its budget.

Each account (call/accounts.py) has its own FaceID client, its own budget in the shared
limiter (its own Redis keys) and its own breaker. A job may be called by any account that
serves its region; an account whose breaker is open is passed over (its jobs go to the
others), and it is tried again only by its probe. Among those that may call, the one with
the fewest calls of this process waiting or in flight per call/s of budget is chosen: an
account whose slots come later (its budget is spent, or cut by the learned cap) holds more
waiting calls, so it gets fewer new ones. With one account there is nothing to choose.

A tenant may be restricted to some accounts (``faceid-batch tenant add --accounts``): its
jobs are called only by those (``allowed``, the names; None: any), and an account it may
not use is never chosen for it, nor counted among the others that may take its job.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field

from faceid_batch.call.accounts import Account
from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.call.caps import OwnerCaps
from faceid_batch.call.faceid_client import FaceIDClient
from faceid_batch.call.margins import LearnedMargins
from faceid_batch.call.ratelimit import GlobalRateLimiter


@dataclass(eq=False)
class Caller:
    """One account's client, budget and breaker, as one process uses them."""

    account: Account
    client: FaceIDClient
    limiter: GlobalRateLimiter
    breaker: AccountBreaker
    busy: int = field(default=0)  # this process's calls chosen for it and not done

    @property
    def name(self) -> str:
        return self.account.name


class Router:
    """Chooses a Caller per call (see the module docstring). Thread-safe."""

    def __init__(self, callers: list[Caller], caps: OwnerCaps,
                 margins: LearnedMargins | None = None) -> None:
        self.callers = callers
        self.caps = caps
        self.margins = margins
        self._lock = threading.Lock()
        self._by_region: dict[str, tuple[Caller, ...]] = {}
        for caller in callers:
            for region in caller.account.regions:
                self._by_region[region] = (*self._by_region.get(region, ()), caller)

    def serving(self, region: str,
                allowed: Collection[str] | None = None) -> tuple[Caller, ...]:
        """The callers of the accounts serving ``region`` (of those named in ``allowed``,
        when given)."""
        found = self._by_region.get(region, ())
        if allowed is None:
            return found
        return tuple(c for c in found if c.name in allowed)

    def budget(self, caller: Caller) -> int:
        """The caller's budget now (its rate limit, or its share of a learned cap), set on
        its limiter with the window the API's refusals taught (margins.py)."""
        account = caller.account
        limit = self.caps.share(account.owner, account.rate_limit)
        caller.limiter.set_limit(limit)
        if self.margins is not None:
            caller.limiter.set_extra_margin(self.margins.extra(account.name))
        return limit

    def choose(self, region: str, max_age: float = 0.0,
               allowed: Collection[str] | None = None) -> tuple[Caller | None, float]:
        """(a caller for a job of ``region``, 0) or (None, seconds before asking again):
        no account serving it (of those named in ``allowed``: the job's tenant's) may call
        now. ``max_age``: how old a closed breaker state read by this process may be
        (AccountBreaker.state). A caller returned is counted busy until ``done``."""
        serving = self.serving(region, allowed)
        if len(serving) == 1:  # one account: nothing to choose
            caller = serving[0]
            may_call, wait = caller.breaker.before_call(max_age)
            if not may_call:
                return None, wait
            with self._lock:
                caller.busy += 1
            return caller, 0.0
        closed = [c for c in serving if not c.breaker.state(max_age).open]
        if closed:
            budgets = {id(c): self.budget(c) for c in closed}
            with self._lock:
                caller = min(closed, key=lambda c: (c.busy + 1) / budgets[id(c)])
                caller.busy += 1
            return caller, 0.0
        # Every one is open: whichever is due for its probe makes it with this job.
        waits = []
        for caller in serving:
            may_call, wait = caller.breaker.before_call(max_age)
            if may_call:
                with self._lock:
                    caller.busy += 1
                return caller, 0.0
            waits.append(wait)
        return None, min(waits, default=60.0)

    def done(self, caller: Caller) -> None:
        with self._lock:
            caller.busy -= 1

    def others_may_call(self, region: str, caller: Caller | str,
                        allowed: Collection[str] | None = None) -> bool:
        """Whether an account other than ``caller`` (or the account of that name) serving
        ``region`` (and named in ``allowed``, when given) has its breaker closed (as this
        process last read it, up to a second ago)."""
        name = caller if isinstance(caller, str) else caller.name
        return any(c.name != name and not c.breaker.state(1.0).open
                   for c in self.serving(region, allowed))
