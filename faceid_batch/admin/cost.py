"""Cost accounting: what a batch or a period spent on FaceID calls, and what it avoided.

Three aggregate queries, whatever the number of rows (no row is loaded):

- calls: ``attempts`` grouped by (code, kind, billable). A row written before revision 0006
  has ``billable`` NULL; its code is mapped with ``billing.py`` here, per group.
  Period scope: ``attempts.started_at`` (when the call was sent). Batch scope: the attempt's
  job is in the batch (``ix_jobs_batch_id_id``, then ``ix_attempts_job_id``).
- avoided by preflight: jobs in state ``refused``. Period scope: ``jobs.created_at`` (a
  refusal happens at submit, so the job is created refused; ``ix_jobs_created_at_id``).
- avoided by dedupe: the sum of ``dedupe_hits.count``. Period scope: ``dedupe_hits.at``;
  batch scope: ``dedupe_hits.batch_id``.

Batch and period can be combined (both must hold). Since is inclusive, until exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from faceid_batch.call import billing
from faceid_batch.call.errors import Kind
from faceid_batch.db import session_scope
from faceid_batch.models import Attempt, Batch, DedupeHit, Job, JobState, Tenant
from faceid_batch.settings import Settings


class CostError(ValueError):
    """The scope cannot be resolved (no such batch, until before since)."""


@dataclass(frozen=True)
class Scope:
    batch_ids: tuple[int, ...] | None = None  # None: every job, in a batch or not
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    tenant_id: int | None = None  # None: every tenant
    tenant_name: str | None = None

    def describe(self) -> str:
        parts = [f"tenant {self.tenant_name}"] if self.tenant_name else []
        if self.batch_ids is not None:
            parts.append("batch " + ", ".join(str(b) for b in self.batch_ids))
        if self.since or self.until:
            parts.append(f"from {self.since.isoformat() if self.since else 'the start'} "
                         f"until {self.until.isoformat() if self.until else 'now'}")
        return "; ".join(parts) or "everything"


@dataclass
class CodeLine:
    code: str
    calls: int
    billable: int
    kind: str


@dataclass
class CostReport:
    scope: Scope
    billable: int = 0
    non_billable: int = 0
    # Billable calls answered with a transient code: paid, no verdict, so the job needed
    # another call (or gave up at MAX_ATTEMPTS).
    transient_retries: int = 0
    avoided_by_preflight: int = 0
    avoided_by_dedupe: int = 0
    # Rows written before revision 0006 (billable NULL), mapped by code at report time.
    mapped_at_report: int = 0
    price_per_call: Decimal = Decimal(0)
    currency: str = "USD"
    codes: list[CodeLine] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return self.billable + self.non_billable

    @property
    def amount(self) -> Decimal:
        """Estimated spend: billable calls × FACEID_PRICE_PER_CALL (exact Decimal)."""
        return self.price_per_call * self.billable

    @property
    def avoided_amount(self) -> Decimal:
        return self.price_per_call * (self.avoided_by_preflight + self.avoided_by_dedupe)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; amounts as strings so no float rounds them."""
        s = self.scope
        return {
            "scope": {"batch_ids": list(s.batch_ids) if s.batch_ids is not None else None,
                      "since": s.since.isoformat() if s.since else None,
                      "until": s.until.isoformat() if s.until else None},
            "calls": self.calls,
            "billable_calls": self.billable,
            "non_billable_calls": self.non_billable,
            "transient_retry_calls": self.transient_retries,
            "avoided_by_preflight": self.avoided_by_preflight,
            "avoided_by_dedupe": self.avoided_by_dedupe,
            "mapped_at_report": self.mapped_at_report,
            "price_per_call": str(self.price_per_call),
            "currency": self.currency,
            "estimated_amount": str(self.amount),
            "avoided_amount": str(self.avoided_amount),
            "codes": [{"code": c.code, "kind": c.kind, "calls": c.calls,
                       "billable": c.billable} for c in self.codes],
        }

    def describe(self) -> str:
        """The text report."""
        priced = self.price_per_call > 0
        lines = [
            f"scope: {self.scope.describe()}",
            f"API calls                  {self.calls:>10,}",
            f"  billable                 {self.billable:>10,}",
            f"  not billable             {self.non_billable:>10,}",
            f"  billable, transient      {self.transient_retries:>10,}"
            "   (paid, no verdict: the job called again)",
            f"calls avoided by preflight {self.avoided_by_preflight:>10,}",
            f"calls avoided by dedupe    {self.avoided_by_dedupe:>10,}",
        ]
        if priced:
            lines.append(f"estimated amount           {self.amount:>10,} {self.currency}"
                         f"   ({self.billable:,} × {self.price_per_call} {self.currency})")
            lines.append(f"avoided amount             {self.avoided_amount:>10,} {self.currency}")
        else:
            lines.append("estimated amount           (set FACEID_PRICE_PER_CALL to estimate)")
        if self.mapped_at_report:
            lines.append(f"({self.mapped_at_report:,} calls recorded before billing was stored: "
                         "mapped by their code now)")
        if self.codes:
            lines.append("\nby code:   calls  billable  code")
            lines.extend(f"  {c.calls:>12,}  {c.billable:>8,}  {c.code}" for c in self.codes)
        return "\n".join(lines)


def resolve_batch(session: Session, name_or_id: str) -> tuple[int, ...]:
    """Batch ids for a batch id or name (a name used by several batches gives all of them)."""
    value = name_or_id.strip()
    if value.isdigit() and session.get(Batch, int(value)) is not None:
        return (int(value),)
    ids = tuple(session.scalars(select(Batch.id).where(Batch.name == value).order_by(Batch.id)))
    if not ids:
        raise CostError(f"--batch: no batch with id or name {name_or_id!r}")
    return ids


def _period(column: Any, scope: Scope) -> list[ColumnElement[bool]]:
    out = []
    if scope.since is not None:
        out.append(column >= scope.since)
    if scope.until is not None:
        out.append(column < scope.until)
    return out


def compute(session: Session, scope: Scope, bill: billing.BillingTable,
            price_per_call: Decimal = Decimal(0), currency: str = "USD") -> CostReport:
    """The report for ``scope`` from three aggregate queries."""
    if scope.since and scope.until and scope.until <= scope.since:
        raise CostError("--until must be after --since")
    report = CostReport(scope, price_per_call=price_per_call, currency=currency)

    calls = select(Attempt.code, Attempt.kind, Attempt.billable, func.count())
    if scope.batch_ids is not None or scope.tenant_id is not None:
        calls = calls.join(Job, Job.id == Attempt.job_id)
    if scope.batch_ids is not None:
        calls = calls.where(Job.batch_id.in_(scope.batch_ids))
    if scope.tenant_id is not None:
        calls = calls.where(Job.tenant_id == scope.tenant_id)
    calls = calls.where(*_period(Attempt.started_at, scope)).group_by(
        Attempt.code, Attempt.kind, Attempt.billable)
    by_code: dict[str, CodeLine] = {}
    for code, kind, billable, n in session.execute(calls):
        if billable is None:
            billable = bill.billable(code)
            report.mapped_at_report += n
        line = by_code.setdefault(code, CodeLine(code, 0, 0, kind))
        line.calls += n
        if billable:
            line.billable += n
            report.billable += n
            if kind == Kind.TRANSIENT.value:
                report.transient_retries += n
        else:
            report.non_billable += n
    report.codes = sorted(by_code.values(), key=lambda c: (-c.calls, c.code))

    refused = select(func.count()).select_from(Job).where(
        Job.state == JobState.REFUSED.value, *_period(Job.created_at, scope))
    dedupe = select(func.coalesce(func.sum(DedupeHit.count), 0)).where(
        *_period(DedupeHit.at, scope))
    if scope.batch_ids is not None:
        refused = refused.where(Job.batch_id.in_(scope.batch_ids))
        dedupe = dedupe.where(DedupeHit.batch_id.in_(scope.batch_ids))
    if scope.tenant_id is not None:
        refused = refused.where(Job.tenant_id == scope.tenant_id)
        dedupe = dedupe.where(or_(
            DedupeHit.job_id.in_(select(Job.id).where(Job.tenant_id == scope.tenant_id)),
            DedupeHit.batch_id.in_(select(Batch.id).where(Batch.tenant_id == scope.tenant_id))))
    report.avoided_by_preflight = int(session.scalar(refused) or 0)
    report.avoided_by_dedupe = int(session.scalar(dedupe) or 0)
    return report


def cost_report(settings: Settings, batch: str | None = None, since: datetime | None = None,
                until: datetime | None = None, tenant: str | None = None) -> CostReport:
    """The cost report for a batch (id or name), a period and/or a tenant (its name),
    priced from the settings."""
    with session_scope(settings.database_url) as session:
        tenant_id = None
        if tenant is not None:
            tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
            if tenant_id is None:
                raise CostError(f"--tenant: no tenant named {tenant!r}")
        scope = Scope(resolve_batch(session, batch) if batch else None, since, until,
                      tenant_id, tenant)
        return compute(session, scope, billing.table(settings.billing_overrides),
                       settings.faceid_price_per_call, settings.faceid_price_currency)
