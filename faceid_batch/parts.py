"""What background work (the feeder, the sweep, the metrics) takes from a worker process:
its settings and clients. ``resources.Resources`` has them; these modules name only this
much, so they do not reach up to the layer that builds them."""

from __future__ import annotations

from typing import Protocol

import redis

from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.call.margins import LearnedMargins
from faceid_batch.settings import Settings


class Parts(Protocol):
    """Settings and a Redis client (the recovery sweep)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def redis(self) -> redis.Redis: ...


class FeederParts(Parts, Protocol):
    """With the account breaker: the feeder feeds nothing while it holds every call back,
    and the metrics show it."""

    @property
    def breaker(self) -> AccountBreaker: ...

    @property
    def breakers(self) -> tuple[AccountBreaker, ...]:
        """Every account's breaker (one without FACEID_ACCOUNTS_FILE)."""
        ...

    @property
    def margins(self) -> LearnedMargins:
        """How much each account's rate-limit window was widened (the metrics show it)."""
        ...
