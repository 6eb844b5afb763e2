"""What a batch's dashboard shows, read from the database (so it survives restarts and
counts every worker's jobs).

Three reads make the panels (and a loose index scan for the batch's share):

- ``tally``: the batch's jobs counted by state, outcome, verdict, attempts and Sim bucket,
  one index-only scan of ``ix_jobs_batch_tally`` (revision 0012).
- ``calls_by_minute``: the ``batch_calls`` rows of the batch's last SERIES_WINDOW (its
  FaceID calls by minute, answer code and billing, with the time they waited for their
  rate-limit slot), written in the transaction of each call's attempt row; ``call_totals``:
  the same rows summed over the batch's life.

``Panels`` caches them for ``Panels.ttl`` seconds per batch, and one reader refreshes a
batch while the others wait for it: a wall of screens showing one batch costs the database
two queries every few seconds, however many are open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Integer, cast, func, select

from faceid_batch.call.errors import classify
from faceid_batch.db import get_engine, session_scope
from faceid_batch.models import Attempt, Batch, BatchCalls, BatchState, Job, JobState, Lane
from faceid_batch.scheduling import schedule
from faceid_batch.times import as_aware, utcnow

SIM_BUCKET = 5  # the Sim histogram's bucket width, in Sim points (0-100)
# The charts over time show the batch's last few hours of calls (at most 180 minutes a
# code); its totals (calls, cost, calls a job) count its whole life.
SERIES_WINDOW = timedelta(hours=3)
RECENT = timedelta(minutes=2)  # the window of the rate a batch gets now
FINAL = frozenset(s.value for s in JobState.final())


class DashboardError(LookupError):
    """No such batch."""


@dataclass(frozen=True)
class TallyRow:
    state: str
    code: str | None
    passed: bool | None
    attempts: int
    sim_bucket: int | None  # floor(Sim / SIM_BUCKET), None without a Sim
    jobs: int


@dataclass(frozen=True)
class MinuteCalls:
    minute: datetime
    code: str
    billable: bool
    calls: int
    waited_ms: int
    account: str = "default"


def _bucket(dialect: str) -> Any:
    if dialect == "postgresql":
        return cast(func.floor(Job.sim / SIM_BUCKET), Integer)
    # SQLite: CAST truncates toward zero, the floor of a Sim (never negative).
    return cast(Job.sim / SIM_BUCKET, Integer)


def tally(url: str, batch_id: int) -> list[TallyRow]:
    """The batch's jobs counted by (state, result_code, passed, attempts, Sim bucket)."""
    bucket = _bucket(get_engine(url).dialect.name).label("b")
    with session_scope(url) as session:
        rows = session.execute(
            select(Job.state, Job.result_code, Job.passed, Job.attempts, bucket, func.count())
            .where(Job.batch_id == batch_id)
            .group_by(Job.state, Job.result_code, Job.passed, Job.attempts, bucket)).all()
    return [TallyRow(str(state), code, passed, attempts or 0, b, n)
            for state, code, passed, attempts, b, n in rows]


def calls_by_minute(url: str, batch_id: int, since: datetime | None = None,
                    window: timedelta | None = None) -> list[MinuteCalls]:
    """The batch's calls by minute, code and billing, oldest first: from ``since``, or the
    last ``window`` (default SERIES_WINDOW) up to its latest minute with a call."""
    q = select(BatchCalls.minute, BatchCalls.code, BatchCalls.billable, BatchCalls.calls,
               BatchCalls.waited_ms, BatchCalls.account).where(BatchCalls.batch_id == batch_id)
    with session_scope(url) as session:
        if since is None:
            last = session.scalar(select(func.max(BatchCalls.minute))
                                  .where(BatchCalls.batch_id == batch_id))
            if last is None:
                return []
            since = as_aware(last) - (window or SERIES_WINDOW)
        rows = session.execute(q.where(BatchCalls.minute >= since)
                               .order_by(BatchCalls.minute)).all()
    return [MinuteCalls(as_aware(m), c, b, n, w, a) for m, c, b, n, w, a in rows]


@dataclass(frozen=True)
class CallTotals:
    """All of a batch's calls: how many, how many billable, and their wait for a slot."""

    calls: int = 0
    billable: int = 0
    waited_ms: int = 0


def call_totals(url: str, batch_id: int) -> CallTotals:
    """The batch's calls over its whole life (one aggregate over its batch_calls rows)."""
    calls = billable = waited = 0
    with session_scope(url) as session:
        for is_billable, n, w in session.execute(
                select(BatchCalls.billable, func.sum(BatchCalls.calls),
                       func.sum(BatchCalls.waited_ms))
                .where(BatchCalls.batch_id == batch_id).group_by(BatchCalls.billable)):
            calls += int(n or 0)
            waited += int(w or 0)
            billable += int(n or 0) if is_billable else 0
    return CallTotals(calls, billable, waited)


@dataclass(frozen=True)
class Share:
    """What the batch can expect of the budget now: the lane's calls/s left over by the
    onboarding lane, split between the due batches of its lane by weight (the feeder's
    fair share)."""

    budget: float  # FACEID_RATE_LIMIT
    onboarding: float  # onboarding calls/s over the last RECENT
    weight: float
    weights: float  # the sum over the keys of its lane with due jobs (its own included)
    batches: int  # those keys: batches, and the jobs of no batch as one

    @property
    def calls_per_second(self) -> float:
        if self.weights <= 0:
            return 0.0
        return max(0.0, self.budget - self.onboarding) * self.weight / self.weights


def share(url: str, batch_id: int, budget: float) -> Share:
    """The batch's fair share of ``budget`` now (see Share)."""
    now = utcnow()
    with session_scope(url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise DashboardError(f"batch {batch_id}: no such batch")
        onboarding = session.scalar(
            select(func.count()).select_from(Attempt).join(Job, Job.id == Attempt.job_id)
            .where(Attempt.started_at >= now - RECENT, Job.lane == Lane.ONBOARDING)) or 0
        # The feeder's own split (schedule.due_weights): the active batches with due jobs,
        # and the lane's jobs of no batch as one more key of weight 1.
        keys = schedule.due_weights(session, batch.lane)
    own = batch.weight if batch.weight and batch.weight > 0 else 1.0
    if batch.state != BatchState.ACTIVE:
        weights, n = 0.0, len(keys)
    else:
        keys[batch_id] = own
        weights, n = sum(keys.values()), len(keys)
    return Share(budget=budget, onboarding=onboarding / RECENT.total_seconds(), weight=own,
                 weights=weights, batches=n)


# -- the panels -----------------------------------------------------------------------------
@dataclass
class Outcomes:
    passed: int = 0
    failed_verdict: dict[str, int] = field(default_factory=dict)  # a verdict that failed
    refused: int = 0  # preflight refused it: never called
    local: dict[str, int] = field(default_factory=dict)  # Local.*: ended before any call
    failed: dict[str, int] = field(default_factory=dict)  # final FaceID errors, attempts out
    cancelled: int = 0


@dataclass
class Dashboard:
    """Every panel of one batch's dashboard."""

    batch_id: int
    name: str
    state: str
    lane: str
    weight: float
    created_at: datetime
    manifest_sha256: str | None
    threshold: float
    budget: float  # calls/s of every account together
    by_state: dict[str, int]
    outcomes: Outcomes
    sim_histogram: list[tuple[float, float, int]]  # (from, to, jobs)
    attempts: dict[int, int]  # attempts -> jobs (jobs that ended)
    minutes: list[MinuteCalls]  # the last SERIES_WINDOW of its calls
    totals: CallTotals
    share: Share
    price: Decimal
    currency: str
    read_at: datetime
    budgets: dict[str, float] = field(default_factory=dict)  # each account's calls/s

    @property
    def total(self) -> int:
        return sum(self.by_state.values())

    @property
    def done(self) -> int:
        return sum(n for s, n in self.by_state.items() if s in FINAL)

    @property
    def remaining(self) -> int:
        return self.total - self.done

    @property
    def calls(self) -> int:
        return self.totals.calls

    @property
    def billable_calls(self) -> int:
        return self.totals.billable

    @property
    def calls_per_job(self) -> float:
        """Calls a job has taken so far, on average over the jobs that ended after one (1.0
        before any did)."""
        called = self.done - self.outcomes.refused - sum(self.outcomes.local.values()) \
            - self.outcomes.cancelled
        return max(1.0, self.calls / called) if called > 0 and self.calls else 1.0

    @property
    def billable_per_job(self) -> float:
        """Billable calls a called job has taken so far (1.0 before any job was called)."""
        called = self.done - self.outcomes.refused - sum(self.outcomes.local.values()) \
            - self.outcomes.cancelled
        return self.billable_calls / called if called > 0 and self.calls else 1.0

    @property
    def eta_seconds(self) -> float | None:
        """From the budget the batch gets (its fair share), not the last minute's rate:
        the jobs left times the calls a job takes, over the calls/s of its share. None
        while it gets none (paused, or every call taken by onboarding)."""
        if self.remaining == 0:
            return 0.0
        rate = self.share.calls_per_second
        if rate <= 0:
            return None
        return self.remaining * self.calls_per_job / rate

    @property
    def cost(self) -> Decimal:
        return self.price * self.billable_calls

    @property
    def projected_cost(self) -> Decimal:
        """The cost so far plus the jobs left at the billable calls a job has taken."""
        return self.cost + self.price * Decimal(round(self.remaining * self.billable_per_job))

    def per_second(self) -> list[tuple[datetime, dict[str, float]]]:
        """Calls/s by code for each minute with calls (the chart's points)."""
        out: dict[datetime, dict[str, float]] = {}
        for m in self.minutes:
            codes = out.setdefault(m.minute, {})
            codes[m.code] = codes.get(m.code, 0.0) + m.calls / 60.0
        return sorted(out.items())

    def per_account(self) -> dict[str, list[tuple[datetime, float]]]:
        """Calls/s of each account, by minute (one line each when several called)."""
        out: dict[str, dict[datetime, float]] = {}
        for m in self.minutes:
            line = out.setdefault(m.account, {})
            line[m.minute] = line.get(m.minute, 0.0) + m.calls / 60.0
        return {a: sorted(points.items()) for a, points in sorted(out.items())}

    def waited_per_call(self) -> list[tuple[datetime, float]]:
        """Mean seconds a call waited for its slot, by minute (time held by the limiter)."""
        calls: dict[datetime, int] = {}
        waited: dict[datetime, int] = {}
        for m in self.minutes:
            calls[m.minute] = calls.get(m.minute, 0) + m.calls
            waited[m.minute] = waited.get(m.minute, 0) + m.waited_ms
        return [(t, waited[t] / 1000.0 / calls[t]) for t in sorted(calls) if calls[t]]

    def account_minutes(self) -> int:
        """Minutes in which an answer stopped the account's calls (the breaker opened)."""
        return len({m.minute for m in self.minutes if classify(m.code).trips_breaker})


def panels(url: str, batch_id: int, *, budget: float, threshold: float,
           price: Decimal = Decimal(0), currency: str = "USD",
           since: datetime | None = None,
           budgets: dict[str, float] | None = None) -> Dashboard:
    """Read every panel of batch ``batch_id``: its tally, its calls (by minute and in
    total) and its share, read side by side, so a refresh takes as long as the slowest."""
    with session_scope(url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise DashboardError(f"batch {batch_id}: no such batch")
        head = (batch.name, str(batch.state), str(batch.lane), batch.weight,
                as_aware(batch.created_at), batch.manifest_sha256)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard") as pool:
        tallied = pool.submit(tally, url, batch_id)
        minutes = pool.submit(calls_by_minute, url, batch_id, since)
        totals = pool.submit(call_totals, url, batch_id)
        shared = pool.submit(share, url, batch_id, budget)
        rows = tallied.result()
    by_state: dict[str, int] = {}
    outcomes = Outcomes()
    buckets: dict[int, int] = {}
    attempts: dict[int, int] = {}
    for r in rows:
        by_state[r.state] = by_state.get(r.state, 0) + r.jobs
        if r.state in FINAL:
            attempts[r.attempts] = attempts.get(r.attempts, 0) + r.jobs
        if r.sim_bucket is not None:
            b = min(r.sim_bucket, 100 // SIM_BUCKET - 1)
            buckets[b] = buckets.get(b, 0) + r.jobs
        _add_outcome(outcomes, r)
    histogram = [(float(b * SIM_BUCKET), float((b + 1) * SIM_BUCKET), buckets.get(b, 0))
                 for b in range(100 // SIM_BUCKET)]
    return Dashboard(
        batch_id=batch_id, name=head[0], state=head[1], lane=head[2], weight=head[3],
        created_at=head[4], manifest_sha256=head[5], threshold=threshold, budget=budget,
        by_state=by_state, outcomes=outcomes, sim_histogram=histogram, attempts=attempts,
        minutes=minutes.result(), totals=totals.result(), share=shared.result(),
        price=price, currency=currency, read_at=utcnow(), budgets=dict(budgets or {}))


def _add_outcome(out: Outcomes, r: TallyRow) -> None:
    code = r.code or "(no code)"
    if r.state == JobState.COMPLETED.value:
        if r.passed:
            out.passed += r.jobs
        else:
            out.failed_verdict[code] = out.failed_verdict.get(code, 0) + r.jobs
    elif r.state == JobState.REFUSED.value:
        out.refused += r.jobs
    elif r.state == JobState.FAILED.value and code == "Local.BatchCancelled":
        out.cancelled += r.jobs
    elif r.state == JobState.FAILED.value:
        bucket = out.local if code.startswith("Local.") else out.failed
        bucket[code] = bucket.get(code, 0) + r.jobs


# -- one read per batch every few seconds, whatever the number of viewers --------------------
class Panels:
    """``panels`` cached per batch for ``ttl`` seconds; concurrent readers of a stale batch
    wait for one refresh instead of each running the queries."""

    def __init__(self, read: Callable[[int], Dashboard], ttl: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read, self.ttl, self.clock = read, ttl, clock
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[float, Dashboard]] = {}
        self._refreshing: dict[int, threading.Lock] = {}
        self.reads = 0  # how many times the database was read (tests, metrics)

    def get(self, batch_id: int) -> Dashboard:
        fresh = self._fresh(batch_id)
        if fresh is not None:
            return fresh
        with self._lock:
            gate = self._refreshing.setdefault(batch_id, threading.Lock())
        with gate:
            fresh = self._fresh(batch_id)  # another reader refreshed it while this waited
            if fresh is not None:
                return fresh
            try:
                board = self.read(batch_id)
            finally:
                with self._lock:  # the gate goes with its read (an unknown id leaves none)
                    if self._refreshing.get(batch_id) is gate:
                        del self._refreshing[batch_id]
            with self._lock:
                self.reads += 1
                self._entries[batch_id] = (self.clock(), board)
                if len(self._entries) > 256:  # forget the oldest batches viewed
                    for old in sorted(self._entries, key=lambda k: self._entries[k][0])[:64]:
                        self._entries.pop(old, None)
            return board

    def forget(self, batch_id: int) -> None:
        """Read the batch afresh next time (after an action changed it)."""
        with self._lock:
            self._entries.pop(batch_id, None)

    def _fresh(self, batch_id: int) -> Dashboard | None:
        with self._lock:
            entry = self._entries.get(batch_id)
        if entry is not None and self.clock() - entry[0] < self.ttl:
            return entry[1]
        return None


def progress(url: str, batch_ids: list[int]) -> dict[int, dict[str, int]]:
    """Jobs by state of each of ``batch_ids`` (one grouped read of ix_jobs_batch_tally)."""
    if not batch_ids:
        return {}
    out: dict[int, dict[str, int]] = {}
    with session_scope(url) as session:
        for batch_id, state, n in session.execute(
                select(Job.batch_id, Job.state, func.count())
                .where(Job.batch_id.in_(batch_ids)).group_by(Job.batch_id, Job.state)):
            if batch_id is not None:
                out.setdefault(batch_id, {})[str(state)] = n
    return out


def list_batches(url: str, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """The newest batches, a row each (id, name, lane, state, weight, created_at)."""
    with session_scope(url) as session:
        rows = session.execute(
            select(Batch.id, Batch.name, Batch.lane, Batch.state, Batch.weight,
                   Batch.created_at, Batch.rows_accepted)
            .order_by(Batch.id.desc()).limit(limit).offset(offset)).all()
    return [{"id": i, "name": n, "lane": str(la), "state": str(s), "weight": w,
             "created_at": as_aware(c), "rows_accepted": ra}
            for i, n, la, s, w, c, ra in rows]
