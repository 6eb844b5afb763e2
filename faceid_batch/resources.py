"""What a worker process builds once and its task threads share: the clients (Redis,
FaceID, COS, the egress policy), the limiter, the breaker, the lease, the billing table.

Built lazily, each on first use (worker.resources() holds the process's one instance).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

import redis

from faceid_batch.call import accounts, billing
from faceid_batch.call.accounts import Account
from faceid_batch.call.billing import BillingTable
from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.call.caps import OwnerCaps
from faceid_batch.call.faceid_client import FaceIDClient
from faceid_batch.call.margins import LearnedMargins
from faceid_batch.call.ratelimit import ONBOARDING_HORIZON, GlobalRateLimiter
from faceid_batch.call.routing import Caller, Router
from faceid_batch.egress import Egress, Policy
from faceid_batch.scheduling.leases import WorkerLease
from faceid_batch.settings import Settings, SettingsError
from faceid_batch.stage.storage import MediaStager

_pool_threads = 1
_build_lock = threading.Lock()
LIMITER_KEY = "faceid:ratelimit"


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
    def account_list(self) -> tuple[Account, ...]:
        """The accounts as configured, without their keys (call/accounts.py): what the
        breakers, budgets and submit's region check need."""
        return accounts.configured(self.settings)

    @cached_property
    def keyed_accounts(self) -> tuple[Account, ...]:
        """The accounts with their SecretKeys (only a process that calls needs them)."""
        self.settings.require_api()  # names what is missing
        return accounts.load(self.settings)

    def _client(self, account: Account) -> FaceIDClient:
        s = self.settings
        return FaceIDClient(
            endpoint=account.endpoint,
            region=account.regions[0],
            secret_id=account.secret_id,
            secret_key=account.secret_key,
            token=account.token,
            connect_timeout=s.faceid_connect_timeout,
            read_timeout=s.faceid_read_timeout,
        )

    @cached_property
    def faceid(self) -> FaceIDClient:
        """The first account's client (the only one without FACEID_ACCOUNTS_FILE)."""
        return self._client(self.keyed_accounts[0])

    @cached_property
    def stager(self) -> MediaStager:
        """The stager of FACEID_REGION's bucket."""
        s = self.settings
        s.require_api()
        # A share of this process's task threads may fetch producers' URLs at once.
        return MediaStager(s, egress=self.egress, slots=self.egress_slots)

    @cached_property
    def _stagers(self) -> dict[str, MediaStager]:
        return {}

    def stager_for(self, region: str | None) -> MediaStager:
        """The stager of ``region``'s bucket (COS_BUCKETS; None: FACEID_REGION)."""
        if region is None or region == self.settings.faceid_region:
            return self.stager
        with _build_lock:
            found = self._stagers.get(region)
            if found is None:
                if region not in self.settings.buckets:
                    raise SettingsError(f"COS_BUCKETS: no bucket for region {region}")
                found = self._stagers[region] = MediaStager(
                    self.settings, egress=self.egress, slots=self.egress_slots, region=region)
        return found

    @cached_property
    def breakers(self) -> tuple[AccountBreaker, ...]:
        """One breaker per account, in the order of the accounts."""
        return tuple(AccountBreaker(self.redis, probe_after=self.settings.breaker_probe_after,
                                    account=a.name) for a in self.account_list)

    @cached_property
    def breaker(self) -> AccountBreaker:
        """The first account's breaker (the only one without FACEID_ACCOUNTS_FILE)."""
        return self.breakers[0]

    def _limiter(self, account: Account) -> GlobalRateLimiter:
        s = self.settings
        key = (LIMITER_KEY if account.name == accounts.DEFAULT
               else f"{LIMITER_KEY}:account:{account.name}")
        return GlobalRateLimiter(
            self.redis, account.rate_limit, window=1.0 + s.rate_limit_margin_ms / 1000,
            key=key, onboarding_horizon=ONBOARDING_HORIZON,
        )

    @cached_property
    def callers(self) -> list[Caller]:
        """Each account's client, budget and breaker (the first one's are ``faceid``,
        ``limiter`` and ``breaker``)."""
        keyed = self.keyed_accounts
        return [Caller(a, self.faceid if i == 0 else self._client(a),
                       self.limiter if i == 0 else self._limiter(a), self.breakers[i])
                for i, a in enumerate(keyed)]

    @cached_property
    def caps(self) -> OwnerCaps:
        """The learned account-wide caps of the accounts' owners (call/caps.py)."""
        budgets: dict[str, int] = {}
        for a in self.account_list:
            budgets[a.owner] = budgets.get(a.owner, 0) + a.rate_limit
        return OwnerCaps(self.redis, budgets)

    @cached_property
    def margins(self) -> LearnedMargins:
        """How much each account's rate-limit window was widened by the API's refusals
        (call/margins.py)."""
        return LearnedMargins(self.redis)

    @cached_property
    def router(self) -> Router:
        """Which account calls for a job (call/routing.py)."""
        return Router(self.callers, self.caps, self.margins)

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
        if "callers" in self.__dict__:  # cached_property: built only once something asked
            for caller in self.callers[1:]:
                caller.limiter.flush()
        if "limiter" in self.__dict__:
            self.limiter.flush()  # the starts of the last calls reach the shared window
        if "lease" in self.__dict__:
            self.lease.stop()

    @cached_property
    def limiter(self) -> GlobalRateLimiter:
        """The first account's budget (the only one without FACEID_ACCOUNTS_FILE)."""
        return self._limiter(self.account_list[0])


