"""What the schedule's background work takes from a worker process: its settings and
clients. ``resources.Resources`` has them; the schedule names only this much, so it does
not reach up to the layer that builds them."""

from __future__ import annotations

from typing import Protocol

import redis

from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.settings import Settings


class Parts(Protocol):
    """Settings and a Redis client (the recovery sweep)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def redis(self) -> redis.Redis: ...


class FeederParts(Parts, Protocol):
    """What the feeder needs besides: the account breaker (nothing is fed while it holds
    every call back)."""

    @property
    def breaker(self) -> AccountBreaker: ...
