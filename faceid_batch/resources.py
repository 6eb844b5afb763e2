"""What a worker process builds once and its task threads share: the clients (Redis,
FaceID, COS, the egress policy), the limiter, the breaker, the lease, the billing table.

Built lazily, each on first use (worker.resources() holds the process's one instance).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

import redis

from faceid_batch.call import billing
from faceid_batch.call.billing import BillingTable
from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.call.faceid_client import FaceIDClient
from faceid_batch.call.ratelimit import ONBOARDING_HORIZON, GlobalRateLimiter
from faceid_batch.egress import Egress, Policy
from faceid_batch.scheduling.leases import WorkerLease
from faceid_batch.settings import Settings, SettingsError
from faceid_batch.stage.storage import MediaStager

_pool_threads = 1


def pool_threads() -> int:
    """How many tasks this process runs at once (the threads pool's size; 1 elsewhere)."""
    return _pool_threads


def set_pool_threads(n: int) -> None:
    """Told by the worker when it starts a threads pool of ``n``."""
    global _pool_threads
    _pool_threads = max(1, n)


@dataclass
class Resources:
    """Clients built once per worker process and shared by its task threads."""

    settings: Settings

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, health_check_interval=30)

    @cached_property
    def faceid(self) -> FaceIDClient:
        s = self.settings
        s.require_api()  # names what is missing
        if s.faceid_secret_id is None or s.faceid_secret_key is None:
            raise SettingsError("missing required setting(s): FACEID_SECRET_ID, "
                                "FACEID_SECRET_KEY")
        return FaceIDClient(
            endpoint=s.faceid_endpoint,
            region=s.faceid_region,
            secret_id=s.faceid_secret_id.get_secret_value(),
            secret_key=s.faceid_secret_key.get_secret_value(),
            token=s.faceid_token.get_secret_value() if s.faceid_token else None,
            connect_timeout=s.faceid_connect_timeout,
            read_timeout=s.faceid_read_timeout,
        )

    @cached_property
    def stager(self) -> MediaStager:
        s = self.settings
        s.require_api()
        # A share of this process's task threads may fetch producers' URLs at once.
        return MediaStager(s, egress=self.egress, slots=self.egress_slots)

    @cached_property
    def breaker(self) -> AccountBreaker:
        return AccountBreaker(self.redis, probe_after=self.settings.breaker_probe_after)

    @cached_property
    def lease(self) -> WorkerLease:
        """This process's worker lease (its heartbeat starts with it)."""
        s = self.settings
        return WorkerLease(self.redis, s.database_url, s.worker_lease_seconds).start()

    @cached_property
    def billing(self) -> BillingTable:
        """Which answers Tencent bills: the defaults with BILLING_OVERRIDES in front."""
        return billing.table(self.settings.billing_overrides)

    @cached_property
    def egress_slots(self) -> threading.BoundedSemaphore:
        """The threads of this process that may wait on producers' servers at once
        (EGRESS_SHARE of the pool): fetches of media URLs and callbacks take turns."""
        return threading.BoundedSemaphore(
            max(1, int(pool_threads() * self.settings.egress_share)))

    @cached_property
    def egress(self) -> Egress:
        """Every fetch and POST made on a producer's behalf: media URLs, best frames,
        completion callbacks (egress.py)."""
        return Egress(Policy(self.settings.egress_networks))

    def stop(self) -> None:
        """Stop this process's lease, if one was started (its heartbeat, its release)."""
        if "limiter" in self.__dict__:  # cached_property: built only once something asked
            self.limiter.flush()  # the starts of the last calls reach the shared window
        if "lease" in self.__dict__:
            self.lease.stop()

    @cached_property
    def limiter(self) -> GlobalRateLimiter:
        s = self.settings
        return GlobalRateLimiter(
            self.redis, s.faceid_rate_limit, window=1.0 + s.rate_limit_margin_ms / 1000,
            onboarding_horizon=ONBOARDING_HORIZON,
        )


