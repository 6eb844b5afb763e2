"""The onboarding lane shared by tenant: how many sign-ups may be in flight, and whose.

A deployment with one tenant sends every sign-up the moment it is stored, as it comes. With
several tenants, the sign-ups *in flight* on the onboarding lane (their message out, or held
by a worker: claimed, staging, waiting for a rate-limit slot, calling) are bounded by what
the budget answers in one call's latency plus SLACK_SECONDS:

    bound = rate × (mean call latency + SLACK_SECONDS)

so that beyond the calls on the wire at most about SLACK_SECONDS of the budget waits ahead
of a new sign-up, whoever sent the rest. The worker threads waiting on the rate limiter are
counted (they are running jobs): the lane's list alone would let a flooding tenant's claimed
jobs queue there. A sign-up is sent at once while its tenant has fewer in flight than its
weighted share of the bound (between the tenants with sign-ups in flight or due, and
itself), or while the lane is under its bound and no one's sign-ups are due; otherwise it is
stored due and the feeder (feeder.py) sends it when the lane has room, sharing that room
between the tenants by weight.

``rate`` is the sum of the accounts' budgets; the latency is the mean of the last
LATENCY_SAMPLE answered calls, read again every LATENCY_REFRESH_SECONDS (DEFAULT_LATENCY
before any call was made).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import func, select, text, union_all
from sqlalchemy.orm import Session

from faceid_batch import messages, tenants
from faceid_batch.call import accounts
from faceid_batch.db import session_scope
from faceid_batch.models import Attempt, JobState, Lane, Tenant, table
from faceid_batch.models import Job as _Job
from faceid_batch.settings import Settings

LANE = Lane.ONBOARDING.value
# What a sign-up may wait besides its own call: its message, the claim, staging, its slot.
SLACK_SECONDS = 0.25
# Before any call was answered: low, so that a flood on a new deployment cannot fill the
# lane ahead of others' sign-ups; the first answers (within seconds) set the real figure.
DEFAULT_LATENCY = 0.5
LATENCY_SAMPLE = 100
LATENCY_REFRESH_SECONDS = 2.0
WEIGHTS_REFRESH_SECONDS = 1.0
# However small the budget, a few sign-ups may be in flight.
MIN_BOUND = 4

_J = table(_Job).c
_RUNNING = JobState.RUNNING.value

# The tenants with sign-ups due, one index seek each (a loose index scan over
# ix_jobs_due_tenant): a backlog of millions in a few tenants costs a few seeks.
_DUE_TENANTS = text("""
WITH RECURSIVE due(t) AS (
  SELECT CAST(0 AS BIGINT)
  UNION ALL
  SELECT (SELECT tenant_id FROM jobs WHERE lane = :lane AND due_at IS NOT NULL
          AND tenant_id > due.t ORDER BY tenant_id LIMIT 1) FROM due WHERE due.t IS NOT NULL
)
SELECT t FROM due WHERE t IS NOT NULL AND t > 0
""")

# Jobs in flight by tenant and lane: held by a worker (ix_jobs_state_id) or with their
# message out (ix_jobs_enqueued_at); both sets are at most a few hundred rows. The lane is
# not in the WHERE clause: SQLite would then walk ix_jobs_lane_id, every job of the lane.
_FLYING = union_all(
    select(_J.tenant_id, _J.lane).where(_J.state == _RUNNING),
    select(_J.tenant_id, _J.lane).where(_J.enqueued_at.is_not(None)),
).subquery()
_IN_FLIGHT = select(_FLYING.c.tenant_id, _FLYING.c.lane, func.count()).group_by(
    _FLYING.c.tenant_id, _FLYING.c.lane)
_LATENCIES = (select(Attempt.latency_ms).where(Attempt.latency_ms > 0)
              .order_by(Attempt.id.desc()).limit(LATENCY_SAMPLE))

_latencies: dict[str, tuple[float, float]] = {}
_weights: dict[str, tuple[float, dict[int, float]]] = {}
_lock = threading.Lock()
T = TypeVar("T")


def _cached(cache: dict[str, tuple[float, T]], url: str, seconds: float,
            read: Callable[[], T]) -> T:
    with _lock:
        found = cache.get(url)
        if found is not None and found[0] > time.monotonic():
            return found[1]
    value = read()
    with _lock:
        cache[url] = (time.monotonic() + seconds, value)
    return value


def shared(settings: Settings) -> bool:
    """Whether the onboarding lane is shared by tenant (more than one tenant exists)."""
    return tenants.count(settings.database_url) > 1


def mean_latency(url: str) -> float:
    """The mean latency of the last answered calls, in seconds (cached a moment)."""
    def read() -> float:
        with session_scope(url) as session:
            values = list(session.scalars(_LATENCIES))
        return sum(values) / len(values) / 1000 if values else DEFAULT_LATENCY
    return _cached(_latencies, url, LATENCY_REFRESH_SECONDS, read)


def rate(settings: Settings) -> int:
    """The calls a second every account together may make."""
    return sum(a.rate_limit for a in accounts.configured_cached(settings))


def bound(settings: Settings) -> int:
    """How many sign-ups may be in flight on the onboarding lane."""
    latency = mean_latency(settings.database_url)
    return max(MIN_BOUND, math.ceil(rate(settings) * (latency + SLACK_SECONDS)))


def weights(url: str) -> dict[int, float]:
    """Every tenant's weight (cached a second)."""
    return _cached(_weights, url, WEIGHTS_REFRESH_SECONDS, lambda: tenants.weights(url))


def in_flight(session: Session) -> dict[int, int]:
    """Sign-ups in flight (message out, or held by a worker), by tenant."""
    return {tenant: n for tenant, lane, n in session.execute(_IN_FLIGHT) if lane == LANE}


def due_tenants(session: Session) -> set[int]:
    """The tenants with sign-ups due (now or later)."""
    return set(session.scalars(_DUE_TENANTS, {"lane": LANE}))


def lock_tenant(session: Session, tenant_id: int) -> None:
    """On PostgreSQL, hold the tenant's row until this transaction ends, so two sign-ups of
    one tenant stored at once do not both count the same room: a tenant never passes its
    share by a race of its own. Sign-ups of *different* tenants are not serialised: each
    transaction counts the lane without the others' uncommitted sign-ups, so while the lane
    is under its bound and no one's sign-ups are due, N tenants storing one at the same
    moment can all be sent, and the lane can hold up to N more than ``bound`` (N - 1 from
    the submitters alone, one more when a feeder round fills the lane at that moment: it
    does not see them either). The overshoot is bounded by the number of tenants storing a
    sign-up at once and lasts until those are answered; the feeder sends nothing while the
    lane is over its bound. SQLite runs the writers of a process one at a time
    (``write_scope``): no overshoot there from one process."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def send_at_once(session: Session, settings: Settings, tenant_id: int) -> int | None:
    """The priority step a new sign-up of ``tenant_id`` is sent at now, or None: it is
    stored due and the feeder sends it in its tenant's turn. A tenant with fewer than half its
    share in flight sends at the first step, ahead of the sign-ups of tenants near or over
    theirs waiting in Redis (messages.py). Call it in the transaction that stores the job,
    after ``lock_tenant``."""
    flying = in_flight(session)
    due = due_tenants(session)
    weight = weights(settings.database_url)
    active = set(flying) | due | {tenant_id}
    limit = bound(settings)
    share = limit * weight.get(tenant_id, 1.0) / sum(weight.get(t, 1.0) for t in active)
    mine = flying.get(tenant_id, 0)
    if mine < share:
        return messages.PRIORITY_FIRST if mine < share / 2 else messages.PRIORITY_ONBOARDING
    if sum(flying.values()) < limit and not due:
        return messages.PRIORITY_ONBOARDING
    return None
