"""A batch's end-of-run report: one CSV row per job, and a summary, tied to the manifest.

- ``iter_report_csv``: the batch's jobs in manifest order (``batch_row``, then id) as CSV
  bytes, streamed from one server-side cursor (constant memory, whatever the batch's size).
- ``summary``: counts by state and decision, pass rate, error mix, attempts and calls, cost
  (``cost.compute`` priced with FACEID_PRICE_PER_CALL), duration and throughput, and whether
  the batch has ended (no job waiting or running). A few aggregate queries; no row loaded.
- ``write_report``: both to ``batch-<id>-report.csv`` and ``batch-<id>-summary.json``; the
  summary names the SHA-256 of the CSV exactly as written (``report_sha256``) and of the
  manifest the batch was read from (``manifest_sha256``), so an auditor can tie the report to
  its input and check that neither was altered.

``iter_report_csv`` and ``summary`` take a database URL or the settings and print nothing:
the CLI (``faceid-batch batch report``) and the admin service use them alike. (It lives
in ``admin``, not ``bulk``: it reuses ``cost`` and ``queries``, a layer above ``bulk``.)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from faceid_batch.admin.cost import Scope, compute
from faceid_batch.admin.queries import csv_cell
from faceid_batch.bulk.batches import BatchError
from faceid_batch.call import billing
from faceid_batch.db import get_engine, session_scope
from faceid_batch.models import Attempt, Batch, BatchCalls, Job, JobState, Result
from faceid_batch.settings import Settings
from faceid_batch.times import as_aware, utcnow

REPORT_FIELDS = ("key", "batch_row", "decision", "sim", "code", "description", "request_id",
                 "attempts", "region", "account", "created_at", "finished_at")
REPORT_CHUNK = 1000  # rows fetched per round trip, and written per yielded piece
WAITING = frozenset(s.value for s in JobState.not_called())
RUNNING = JobState.RUNNING.value


class ReportError(BatchError):
    """The report cannot be written as asked (the batch has not ended); the message says
    why. A ``BatchError``, so whatever handles those handles this."""


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote."""

    csv_path: Path
    summary_path: Path
    report_sha256: str  # of the CSV file's bytes
    manifest_sha256: str | None  # of the manifest of the batch's latest run; None: unknown
    rows: int  # jobs in the CSV
    summary: dict[str, Any]  # as written to the JSON file


def _iso(value: datetime | None) -> str:
    return "" if value is None else as_aware(value).astimezone(UTC).isoformat()


def decision(state: str, passed: bool | None) -> str:
    """``pass`` / ``fail`` for a job with a verdict; otherwise its state as stored."""
    if state == JobState.COMPLETED.value and passed is not None:
        return "pass" if passed else "fail"
    return str(state)


def _check_batch(database_url: str, batch_id: int) -> Batch:
    with session_scope(database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise BatchError(f"batch {batch_id}: no such batch")
        return batch


def iter_report_csv(database_url: str, batch_id: int) -> Iterator[bytes]:
    """The batch's report as CSV (UTF-8), header first, one row per job in manifest order.

    Columns: ``key`` (the idempotency key), ``batch_row`` (its manifest line),
    ``decision`` (``pass`` / ``fail`` for a verdict, otherwise the job's state: ``failed``,
    ``refused``, or a state not final yet in a partial report), ``sim``, ``code`` (the
    outcome code), ``description`` (the result's, or the job's error message when it has no
    result), ``request_id`` (the result's, or the last attempt's), ``attempts``, ``region``,
    ``account``, ``created_at`` and ``finished_at`` (ISO 8601, UTC). ``region`` and
    ``account`` are present but empty: the FaceID region and account are settings of the
    deployment (FACEID_REGION, FACEID_SECRET_ID), not recorded per job, so the report does
    not claim one for a job. Every cell is neutralised against spreadsheet formulas
    (``queries.csv_cell``).

    An unknown batch raises ``BatchError`` at once (before any byte is produced); the rows
    are then read as they are consumed, from one streamed query.
    """
    _check_batch(database_url, batch_id)
    return (piece for piece, _ in _report_pieces(database_url, batch_id))


def _report_pieces(database_url: str, batch_id: int) -> Iterator[tuple[bytes, int]]:
    """The CSV in pieces of up to REPORT_CHUNK rows: (bytes, jobs in them)."""
    last_request_id = (
        select(Attempt.request_id).where(Attempt.job_id == Job.id)
        .order_by(Attempt.id.desc()).limit(1).correlate(Job).scalar_subquery()
    )
    query = (
        select(Job.idempotency_key, Job.batch_row, Job.state, Job.passed, Job.sim,
               Job.result_code, Result.id, Result.description, Job.error_message,
               func.coalesce(Result.request_id, last_request_id), Job.attempts,
               Job.created_at, Job.finished_at)
        .outerjoin(Result, Result.job_id == Job.id)
        .where(Job.batch_id == batch_id)
        .order_by(Job.batch_row.asc().nulls_last(), Job.id.asc())
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(REPORT_FIELDS)
    pending = 0
    with get_engine(database_url).connect() as conn:
        rows = conn.execution_options(stream_results=True, yield_per=REPORT_CHUNK).execute(query)
        for (key, row, state, passed, sim, code, result_id, result_description, error,
             request_id, attempts, created_at, finished_at) in rows:
            description = error if result_id is None else result_description
            writer.writerow([csv_cell(v) for v in (
                key, row, decision(state, passed), sim, code, description, request_id,
                attempts, None, None, _iso(created_at), _iso(finished_at))])
            pending += 1
            if pending >= REPORT_CHUNK:
                yield buffer.getvalue().encode(), pending
                buffer.seek(0)
                buffer.truncate()
                pending = 0
    yield buffer.getvalue().encode(), pending


def summary(settings: Settings, batch_id: int) -> dict[str, Any]:
    """The batch's figures as plain JSON types (amounts as strings, times ISO 8601 UTC).

    ``ended`` is true when no job of the batch is waiting (queued, retrying, paused) or
    running. ``pass_rate`` is passed / jobs with a verdict (None without one); ``error_mix``
    counts the outcome codes of the failed jobs and of the fail verdicts. Calls, billable
    calls and the estimated amount are ``cost.compute``'s for the batch; the time the
    batch's calls waited for their rate-limit slot is summed from ``batch_calls``. The
    duration runs from the batch's first job created (or its latest manifest run's start,
    if earlier) to its last job finished; throughput is finished jobs per second of it.
    Raises ``BatchError`` for an unknown batch.
    """
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise BatchError(f"batch {batch_id}: no such batch")
        groups = session.execute(
            select(Job.state, Job.passed, Job.result_code, func.count(),
                   func.coalesce(func.sum(Job.attempts), 0))
            .where(Job.batch_id == batch_id)
            .group_by(Job.state, Job.passed, Job.result_code)
        ).all()
        first_created, last_finished, finished = session.execute(
            select(func.min(Job.created_at), func.max(Job.finished_at),
                   func.count(Job.finished_at))
            .where(Job.batch_id == batch_id)
        ).one()
        waited_ms = session.scalar(
            select(func.coalesce(func.sum(BatchCalls.waited_ms), 0))
            .where(BatchCalls.batch_id == batch_id))
        cost = compute(session, Scope((batch_id,)), billing.table(settings.billing_overrides),
                       settings.faceid_price_per_call, settings.faceid_price_currency)
        head = {
            "batch_id": batch.id, "name": batch.name, "state": str(batch.state),
            "lane": str(batch.lane), "created_at": _iso(batch.created_at),
            "manifest": batch.manifest, "manifest_sha256": batch.manifest_sha256,
            "manifest_rows": {"read": batch.rows_read, "accepted": batch.rows_accepted,
                              "known": batch.rows_known, "bad": batch.rows_bad},
        }
        enqueue_started = batch.enqueue_started_at

    by_state: Counter[str] = Counter()
    by_decision: Counter[str] = Counter()
    error_mix: Counter[str] = Counter()
    attempts = 0
    for state, passed, code, n, tries in groups:
        by_state[str(state)] += n
        made = decision(state, passed)
        by_decision[made] += n
        attempts += int(tries)
        if made in ("fail", JobState.FAILED.value):
            error_mix[code or "(no code)"] += n
    waiting = sum(n for s, n in by_state.items() if s in WAITING)
    running = by_state.get(RUNNING, 0)
    verdicts = by_decision["pass"] + by_decision["fail"]

    starts = [as_aware(t) for t in (first_created, enqueue_started) if t is not None]
    started_at = min(starts) if starts else None
    finished_at = as_aware(last_finished) if last_finished is not None else None
    duration = (max(0.0, (finished_at - started_at).total_seconds())
                if started_at is not None and finished_at is not None else None)
    cost_json = cost.to_json()
    del cost_json["scope"]  # the batch
    return {
        **head,
        "ended": waiting == 0 and running == 0,
        "waiting": waiting,
        "running": running,
        "jobs": sum(by_state.values()),
        "by_state": dict(by_state.most_common()),
        "by_decision": dict(by_decision.most_common()),
        "passed": by_decision["pass"],
        "with_verdict": verdicts,
        "pass_rate": round(by_decision["pass"] / verdicts, 4) if verdicts else None,
        "error_mix": dict(sorted(error_mix.items(), key=lambda kv: (-kv[1], kv[0]))),
        "attempts": attempts,
        "calls": cost.calls,
        "billable_calls": cost.billable,
        "estimated_amount": str(cost.amount),
        "currency": cost.currency,
        "rate_limit_waited_ms": int(waited_ms or 0),
        "cost": cost_json,
        "started_at": _iso(started_at) or None,
        "finished_at": _iso(finished_at) or None,
        "duration_seconds": round(duration, 3) if duration is not None else None,
        "finished_jobs": int(finished),
        "throughput_per_second": round(finished / duration, 3) if duration else None,
    }


def write_report(settings: Settings, batch_id: int, out_dir: Path,
                 partial: bool = False) -> ReportFiles:
    """Write ``batch-<id>-report.csv`` and ``batch-<id>-summary.json`` into ``out_dir``
    (made if missing); each file appears whole or not at all.

    The summary is ``summary()`` with ``report_sha256`` (of the CSV file's bytes),
    ``report_rows``, ``generated_at`` and ``partial`` (true when jobs were still waiting or
    running). A batch that has not ended raises ``ReportError`` naming how many jobs are
    waiting and running, unless ``partial``; an unknown batch raises ``BatchError``.
    """
    figures = summary(settings, batch_id)
    if not figures["ended"] and not partial:
        raise ReportError(
            f"batch {batch_id} has not ended: {figures['waiting']} jobs waiting and "
            f"{figures['running']} running; wait for them, or ask for a partial report")
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"batch-{batch_id}-report.csv"
    summary_path = out_dir / f"batch-{batch_id}-summary.json"

    digest = hashlib.sha256()
    rows = 0
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            for piece, jobs in _report_pieces(settings.database_url, batch_id):
                fh.write(piece)
                digest.update(piece)
                rows += jobs
        os.replace(tmp, csv_path)
    finally:
        tmp.unlink(missing_ok=True)
    figures = {
        **figures,
        "partial": not figures["ended"],
        "generated_at": _iso(utcnow()),
        "report_file": csv_path.name,
        "report_rows": rows,
        "report_sha256": digest.hexdigest(),
    }
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n",
                       encoding="utf-8")
        os.replace(tmp, summary_path)
    finally:
        tmp.unlink(missing_ok=True)
    return ReportFiles(csv_path, summary_path, figures["report_sha256"],
                       figures["manifest_sha256"], rows, figures)


def format_summary(figures: dict[str, Any]) -> str:
    """A few lines of plain text from ``summary()``: counts, pass rate, cost, duration and
    throughput (for ``faceid-batch batch report``)."""
    decisions = ", ".join(f"{k} {v}" for k, v in figures["by_decision"].items()) or "no jobs"
    rate = figures["pass_rate"]
    lines = [
        f"jobs: {figures['jobs']} ({decisions})"
        + ("" if figures["ended"] else
           f"; not ended: {figures['waiting']} waiting, {figures['running']} running"),
        "pass rate: " + (f"{rate:.2%} ({figures['passed']} of {figures['with_verdict']} "
                         "with a verdict)" if rate is not None else "none (no verdict)"),
    ]
    if figures["error_mix"]:
        lines.append("errors: " + ", ".join(
            f"{code} {n}" for code, n in list(figures["error_mix"].items())[:5]))
    amount = Decimal(figures["cost"]["price_per_call"]) > 0
    lines.append(f"calls: {figures['calls']} ({figures['billable_calls']} billable), "
                 f"attempts {figures['attempts']}; cost "
                 + (f"{figures['estimated_amount']} {figures['currency']}" if amount
                    else "not estimated (set FACEID_PRICE_PER_CALL)"))
    duration = figures["duration_seconds"]
    throughput = figures["throughput_per_second"]
    lines.append("duration: " + (f"{timedelta(seconds=round(duration))}" if duration is not None
                                 else "none (no job finished)")
                 + (f", {throughput:g} jobs/s" if throughput is not None else ""))
    return "\n".join(lines)
